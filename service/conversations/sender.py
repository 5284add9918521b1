"""Sending text to a user: the one path every message Parley sends takes, whatever its channel.

The conversation's channel turns the text into messages (``Channel.parts``: an agent's SMS reply is
sanitised to GSM-7 and split within the segment budget; an exact text goes as written). Each message is
checked against the opt-out list right before it goes out and, on a channel with a session window, against
the window; counted against the number's daily segment limit where the channel has segments; and becomes a
chat message carrying the provider's id, the encoding and the segment count, or why it was not sent.
Twilio error 21610 records the opt-out. Messages go one after another, each only once the provider
accepted the previous one.

A message of a chat that Twilio refused for now (``SendDeferred``: a 429, a 5xx, a refused connection) is not
lost: it becomes ``retrying``, and so does every later message of the conversation, which its commit puts in the
conversation's outgoing queue (``conversations.outgoing``); the resend loop tries them again, in order
(``conversations.resend``, through ``resend``). The check before each message (``Outgoing.gate``) is the
opt-out check and "does anything wait?" in one command, so a message never overtakes one that waits. A message
that belongs to no chat (the ``send_sms`` tool writing to another number) has no commit to queue it: it is
tried up to three times within about 1.5 s, as before, then fails.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from urllib.parse import quote_plus

from service.address import Conversation
from service.chats.delivery import RETRYING
from service.chats.model import Message, Role
from service.clock import now_ms
from service.conversations.channel import Channel, Gateway, Sent
from service.conversations.outgoing import Gate, Outgoing, retry_delay_ms
from service.conversations.queue import ConversationQueue
from service.errors import LimitReached, RecipientUnsubscribed, SendDeferred, SendError
from service.metrics import Metrics
from service.retell.models import PhoneNumber
from service.settings import Settings
from service.sms.limits import DailySegments
from service.sms.optouts import OptOuts
from service.sms.pacing import Pacing
from service.storage import keys

log = logging.getLogger(__name__)

STATUS_PATH = "/twilio/status"
BEHIND = "waiting to be sent: an earlier message of this conversation is waiting for Twilio"
QUEUE_FULL = f"not sent: {keys.OUTGOING_CAP} messages of this conversation are already waiting for Twilio"
CHATLESS_ATTEMPTS = 3          # tries of a message no chat records (nothing can queue it)
CHATLESS_BACKOFF_S = 0.5


def outside_window(channel: Channel, conv: Conversation) -> str:
    """Why ``channel`` refuses a message that starts or continues ``conv`` now: its session window is over."""
    window_s = channel.session_window_s or 0  # pragma: no mutate (only asked of a channel with a window: or 1, alike)
    hours = window_s // 3600
    return (f"{conv.user_number} has not written to {conv.agent_number} on {channel.name} in the last {hours} "
            f"hours: {channel.name} allows a business to write first only with an approved template, and only "
            "within that window after the user's last message otherwise")


class Sender:
    def __init__(self, settings: Settings, gateway: Gateway, channels: Mapping[str, Channel], queue: ConversationQueue,
                 optouts: OptOuts, daily: DailySegments, metrics: Metrics, outgoing: Outgoing, pacing: Pacing) -> None:
        self._metrics = metrics
        self._settings = settings
        self._gateway = gateway
        self._channels = channels
        self._queue = queue
        self._optouts = optouts
        self._daily = daily
        self._outgoing = outgoing
        self._pacing = pacing

    def channel(self, conv: Conversation) -> Channel:
        return self._channels[conv.channel]

    def status_callback(self, chat_id: str | None) -> str | None:
        """Where the provider reports the message's delivery: ``/twilio/status``, naming the chat it belongs to."""
        if not self._settings.public_url:
            return None
        url = self._settings.public_url.rstrip("/") + STATUS_PATH
        return f"{url}?chat_id={quote_plus(chat_id)}" if chat_id else url

    def account_for(self, number: PhoneNumber) -> str | None:
        return number.twilio_account_sid or self._settings.twilio_account_sid

    async def send_text(
        self, conv: Conversation, number: PhoneNumber, text: str, *, chat_id: str | None, max_segments: int = 10,
        exact: bool = False,
    ) -> list[Message]:
        """Send ``text`` as one or more messages; the agent messages to record (failed sends included, and
        ``retrying`` ones, which the commit that records them queues). ``chat_id``: the chat they belong to,
        which their delivery statuses update; the caller holds ``conv`` and records them in that chat."""
        channel = self.channel(conv)
        sent: list[Message] = []
        waiting: str | None = None     # why the rest of the text waits, once something waits
        for part in channel.parts(text, exact=exact, max_segments=max_segments):
            message = self._message(channel, part)
            if waiting is None:
                gate = await self._gate(conv, can_wait=chat_id is not None)
                if gate is Gate.OPTED_OUT:
                    log.info("not sending: user opted out", extra={"conv": conv.id})
                    break
                if gate is Gate.FULL:
                    message.status, message.error = "failed", QUEUE_FULL
                    log.warning("send refused: too many messages waiting for Twilio", extra={"conv": conv.id})
                    sent.append(message)
                    break
                if gate is Gate.WAITING:
                    waiting = BEHIND
            if waiting is not None:
                message.status, message.error = RETRYING, waiting
                sent.append(message)
                continue
            deferred = await self._send_part(channel, conv, number, message, chat_id, can_wait=chat_id is not None)
            sent.append(message)
            if deferred is not None:
                # The gate would see defer's marker all the same: this only saves the next part a round trip.
                waiting = BEHIND  # pragma: no mutate (see above)
                await self._outgoing.defer(conv, now_ms() + retry_delay_ms(
                    0, self._settings.send_retry_base_ms, deferred.retry_after_s))
            if message.status == "failed":
                break
        return sent

    async def resend(self, conv: Conversation, number: PhoneNumber, message: Message, chat_id: str
                     ) -> SendDeferred | None:
        """Try a waiting message again (the resend loop, holding ``conv``, checked the opt-out); ``message``
        becomes sent, failed, or still ``retrying`` (then the deferral is returned)."""
        return await self._send_part(self.channel(conv), conv, number, message, chat_id, can_wait=True)

    async def _gate(self, conv: Conversation, *, can_wait: bool) -> Gate:
        if can_wait:
            return await self._outgoing.gate(conv)
        return Gate.OPTED_OUT if await self._optouts.is_opted_out(conv) else Gate.CLEAR

    @staticmethod
    def _message(channel: Channel, part: str) -> Message:
        measure = channel.measure(part)
        return Message(Role.AGENT, content=part, created_timestamp=now_ms(),
                       encoding=measure.encoding.value if measure else None,
                       segments=measure.segments if measure else None)

    async def _send_part(self, channel: Channel, conv: Conversation, number: PhoneNumber, message: Message,
                         chat_id: str | None, *, can_wait: bool) -> SendDeferred | None:
        """Send ``message`` now: it gets the provider's SID and status, or fails with why. When the provider
        refused it for now and ``can_wait``, it becomes ``retrying`` and the deferral is returned."""
        measure = channel.measure(message.content)
        if channel.session_window_s is not None and not await self._queue.in_session(conv):
            message.status, message.error = "failed", outside_window(channel, conv)
            log.warning("send refused: outside the session window", extra={"conv": conv.id})
            return None
        reserved = measure.segments if measure and channel.counts_segments else 0
        try:
            if reserved:
                await self._daily.reserve(number, reserved)
        except LimitReached as exc:
            message.status, message.error = "failed", str(exc)
            log.warning("send refused: daily segment limit", extra={"conv": conv.id, "error": str(exc)})
            return None
        try:
            account = self.account_for(number)
            if account is None:
                raise SendError(f"no Twilio account for {number.phone_number} (set TWILIO_ACCOUNT_SID)")
            await self._wait_for_slot(number, measure.segments if measure else 1)
            result = await self._deliver(account, channel, conv, message.content, chat_id,
                                         attempts=1 if can_wait else CHATLESS_ATTEMPTS)
        except SendError as exc:
            if reserved:
                await self._daily.refund(number, reserved)
            message.error_code, message.error = exc.code, str(exc)
            if isinstance(exc, SendDeferred) and can_wait:
                message.status = RETRYING
                log.warning("send deferred: Twilio refused it for now; it waits in the outgoing queue",
                            extra={"conv": conv.id, "error": str(exc), "code": exc.code,
                                   "retry_after_s": exc.retry_after_s})
                return exc
            message.status = "failed"
            if isinstance(exc, RecipientUnsubscribed):
                await self._optouts.record(conv, source="twilio_21610")
                log.info("twilio says the user unsubscribed; opt-out recorded", extra={"conv": conv.id})
            else:
                log.warning("send failed", extra={"conv": conv.id, "error": str(exc), "code": exc.code})
            return None
        message.message_sid, message.status = result.sid, result.status
        message.error_code = message.error = None
        if measure and channel.counts_segments:   # not the dev phone's test texts
            self._metrics.segments.labels(measure.encoding.value).inc(measure.segments)
        log.info("message sent", extra={"conv": conv.id, "message_sid": result.sid, "channel": conv.channel,
                                        "segments": reserved})
        return None

    async def _wait_for_slot(self, number: PhoneNumber, segments: int) -> None:
        """Wait for the number's next send slot when it sets ``segments_per_second``; ``SendDeferred`` when that
        slot is too far away to wait for here."""
        wait_ms = await self._pacing.reserve(number, segments)
        if wait_ms < 0:
            raise SendDeferred(f"{number.phone_number} sends at most {number.segments_per_second:g} segments a second "
                               f"(segments_per_second): its next free slot is {-wait_ms} ms away",
                               retry_after_s=-wait_ms / 1000)
        if wait_ms:
            await asyncio.sleep(wait_ms / 1000)

    async def _deliver(self, account: str, channel: Channel, conv: Conversation, body: str, chat_id: str | None, *,
                       attempts: int) -> Sent:
        """The gateway's send, tried up to ``attempts`` times while it is deferred (backoff with jitter)."""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(CHATLESS_BACKOFF_S * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                return await self._gateway.send(account_sid=account, from_=channel.address(conv.agent_number),
                                                to=channel.address(conv.user_number), body=body,
                                                status_callback=self.status_callback(chat_id))
            except SendDeferred:
                if attempt + 1 >= attempts:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover  # pragma: no mutate (unreachable)
