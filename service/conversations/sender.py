"""Sending text to a user: the one path every message Parley sends takes, whatever its channel.

The conversation's channel turns the text into messages (``Channel.parts``: an agent's SMS reply is
sanitised to GSM-7 and split within the segment budget; an exact text goes as written). Each message is
checked against the opt-out list right before it goes out and, on a channel with a session window, against
the window; counted against the number's daily segment limit where the channel has segments; and becomes a
chat message carrying the provider's id, the encoding and the segment count, or why it was not sent.
Twilio error 21610 records the opt-out. Messages go one after another, each only once the provider
accepted the previous one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import urlencode

from service.address import Conversation
from service.chats.model import Message, Role
from service.clock import now_ms
from service.conversations.channel import Channel, Gateway
from service.conversations.queue import ConversationQueue
from service.errors import LimitReached, RecipientUnsubscribed, SendError
from service.metrics import Metrics
from service.retell.models import PhoneNumber
from service.settings import Settings
from service.sms.limits import DailySegments
from service.sms.optouts import OptOuts

log = logging.getLogger(__name__)

STATUS_PATH = "/twilio/status"


def outside_window(channel: Channel, conv: Conversation) -> str:
    """Why ``channel`` refuses a message that starts or continues ``conv`` now: its session window is over."""
    hours = (channel.session_window_s or 0) // 3600
    return (f"{conv.user_number} has not written to {conv.agent_number} on {channel.name} in the last {hours} "
            f"hours: {channel.name} allows a business to write first only with an approved template, and only "
            "within that window after the user's last message otherwise")


class Sender:
    def __init__(self, settings: Settings, gateway: Gateway, channels: Mapping[str, Channel], queue: ConversationQueue,
                 optouts: OptOuts, daily: DailySegments, metrics: Metrics) -> None:
        self._metrics = metrics
        self._settings = settings
        self._gateway = gateway
        self._channels = channels
        self._queue = queue
        self._optouts = optouts
        self._daily = daily

    def channel(self, conv: Conversation) -> Channel:
        return self._channels[conv.channel]

    def status_callback(self, chat_id: str | None) -> str | None:
        """Where the provider reports the message's delivery: ``/twilio/status``, naming the chat it belongs to."""
        if not self._settings.public_url:
            return None
        url = self._settings.public_url.rstrip("/") + STATUS_PATH
        return url + "?" + urlencode({"chat_id": chat_id}) if chat_id else url

    def account_for(self, number: PhoneNumber) -> str | None:
        return number.twilio_account_sid or self._settings.twilio_account_sid

    async def send_text(
        self, conv: Conversation, number: PhoneNumber, text: str, *, chat_id: str | None, max_segments: int = 10,
        exact: bool = False,
    ) -> list[Message]:
        """Send ``text`` as one or more messages; the agent messages to record (failed sends included).
        ``chat_id``: the chat they belong to, which their delivery statuses update."""
        channel = self.channel(conv)
        sent: list[Message] = []
        for part in channel.parts(text, exact=exact, max_segments=max_segments):
            if await self._optouts.is_opted_out(conv):
                log.info("not sending: user opted out", extra={"conv": conv.id})
                break
            message = await self._send_part(channel, conv, number, part, chat_id)
            sent.append(message)
            if message.status == "failed":
                break
        return sent

    async def _send_part(self, channel: Channel, conv: Conversation, number: PhoneNumber, part: str,
                         chat_id: str | None) -> Message:
        measure = channel.measure(part)
        message = Message(Role.AGENT, content=part, created_timestamp=now_ms(),
                          encoding=measure.encoding.value if measure else None,
                          segments=measure.segments if measure else None)
        if channel.session_window_s is not None and not await self._queue.in_session(conv):
            message.status, message.error = "failed", outside_window(channel, conv)
            log.warning("send refused: outside the session window", extra={"conv": conv.id})
            return message
        reserved = measure.segments if measure and channel.counts_segments else 0
        try:
            if reserved:
                await self._daily.reserve(number, reserved)
        except LimitReached as exc:
            message.status, message.error = "failed", str(exc)
            log.warning("send refused: daily segment limit", extra={"conv": conv.id, "error": str(exc)})
            return message
        try:
            account = self.account_for(number)
            if account is None:
                raise SendError(f"no Twilio account for {number.phone_number} (set TWILIO_ACCOUNT_SID)")
            result = await self._gateway.send(account_sid=account, from_=channel.address(conv.agent_number),
                                              to=channel.address(conv.user_number), body=part,
                                              status_callback=self.status_callback(chat_id))
        except SendError as exc:
            if reserved:
                await self._daily.refund(number, reserved)
            message.status, message.error_code, message.error = "failed", exc.code, str(exc)
            if isinstance(exc, RecipientUnsubscribed):
                await self._optouts.record(conv, source="twilio_21610")
                log.info("twilio says the user unsubscribed; opt-out recorded", extra={"conv": conv.id})
            else:
                log.warning("send failed", extra={"conv": conv.id, "error": str(exc), "code": exc.code})
            return message
        message.message_sid, message.status = result.sid, result.status
        if measure:
            self._metrics.segments.labels(measure.encoding.value).inc(measure.segments)
        log.info("message sent", extra={"conv": conv.id, "message_sid": result.sid, "channel": conv.channel,
                                        "segments": reserved})
        return message
