"""Sending text to a user: the one path every SMS Parley sends takes.

An agent's text is sanitised to GSM-7 and split within the segment budget; an exact text (``exact=True``)
goes as written, in one message. Each part is checked against the opt-out list right before it goes out,
counted against the number's daily segment limit, and becomes a chat message carrying Twilio's SID, the
encoding and the segment count, or why it was not sent. Twilio error 21610 records the opt-out. Parts go
one after another, each only once Twilio accepted the previous one.
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from service.channels.twilio.gateway import TwilioGateway
from service.chats.store import Message, Role
from service.clock import now_ms
from service.errors import LimitReached, RecipientUnsubscribed, SendError
from service.metrics import Metrics
from service.retell.models import PhoneNumber
from service.settings import Settings
from service.sms import segments
from service.sms.limits import DailySegments
from service.sms.optouts import OptOuts
from service.storage.keys import Conversation

log = logging.getLogger(__name__)

# A runaway reply is cut to this many characters (Twilio's limit for one message), at a sentence end.
MAX_REPLY_CHARS = segments.MAX_BODY_CHARS


def _bounded(text: str, conv: Conversation) -> str:
    if len(text) <= MAX_REPLY_CHARS:
        return text
    cut = text[:MAX_REPLY_CHARS]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    log.warning("reply cut", extra={"conv": conv.id, "chars": len(text)})
    return cut[:end + 1] if end > 0 else cut


class Sender:
    def __init__(self, settings: Settings, gateway: TwilioGateway, optouts: OptOuts, daily: DailySegments,
                 metrics: Metrics) -> None:
        self._metrics = metrics
        self._settings = settings
        self._gateway = gateway
        self._optouts = optouts
        self._daily = daily

    def status_callback(self, chat_id: str | None) -> str | None:
        """Where Twilio reports the message's delivery: ``/twilio/status``, naming the chat it belongs to."""
        if not self._settings.public_url:
            return None
        url = self._settings.public_url.rstrip("/") + "/twilio/status"
        return url + "?" + urlencode({"chat_id": chat_id}) if chat_id else url

    def account_for(self, number: PhoneNumber) -> str | None:
        return number.twilio_account_sid or self._settings.twilio_account_sid

    async def send_text(
        self, conv: Conversation, number: PhoneNumber, text: str, *, chat_id: str | None, max_segments: int = 10,
        exact: bool = False,
    ) -> list[Message]:
        """Send ``text`` as one or more SMS; the agent messages to record (failed sends included). ``chat_id``:
        the chat they belong to, which their delivery statuses update."""
        sent: list[Message] = []
        parts = [text] if exact else segments.split(_bounded(segments.sanitize(text), conv), max_segments)
        for part in parts:
            if await self._optouts.is_opted_out(conv):
                log.info("not sending: user opted out", extra={"conv": conv.id})
                break
            message = await self._send_part(conv, number, part, chat_id)
            sent.append(message)
            if message.status == "failed":
                break
        return sent

    async def _send_part(self, conv: Conversation, number: PhoneNumber, part: str, chat_id: str | None) -> Message:
        measure = segments.measure(part)
        message = Message(Role.AGENT, content=part, created_timestamp=now_ms(),
                          encoding=measure.encoding.value, segments=measure.segments)
        account = self.account_for(number)
        try:
            await self._daily.reserve(number, measure.segments)
        except LimitReached as exc:
            message.status, message.error = "failed", str(exc)
            log.warning("send refused: daily segment limit", extra={"conv": conv.id, "error": str(exc)})
            return message
        try:
            if account is None:
                raise SendError(f"no Twilio account for {number.phone_number} (set TWILIO_ACCOUNT_SID)")
            result = await self._gateway.send(account_sid=account, from_=conv.agent_number, to=conv.user_number,
                                              body=part, status_callback=self.status_callback(chat_id))
        except SendError as exc:
            await self._daily.refund(number, measure.segments)
            message.status, message.error_code, message.error = "failed", exc.code, str(exc)
            if isinstance(exc, RecipientUnsubscribed):
                await self._optouts.record(conv, source="twilio_21610")
                log.info("twilio says the user unsubscribed; opt-out recorded", extra={"conv": conv.id})
            else:
                log.warning("send failed", extra={"conv": conv.id, "error": str(exc), "code": exc.code})
            return message
        message.message_sid, message.status = result.sid, result.status
        self._metrics.segments.labels(measure.encoding.value).inc(measure.segments)
        log.info("sms sent", extra={"conv": conv.id, "message_sid": result.sid, "segments": measure.segments})
        return message
