"""Sending an agent's text to a user: sanitise to GSM-7, split within the segment budget, send in order.

Each part is checked against the opt-out list right before it goes out, and each becomes a chat
message carrying Twilio's SID, the encoding and the segment count. Twilio error 21610 records the
opt-out. Parts are sent one after another, each only once Twilio accepted the previous one.
"""

from __future__ import annotations

import logging

from . import segments
from .chats import Message, Role
from .errors import RecipientUnsubscribed, SendError
from .keys import Conversation
from .mailbox import now_ms
from .optouts import OptOuts
from .retell import PhoneNumber
from .settings import Settings
from .twilio_gateway import TwilioGateway

log = logging.getLogger(__name__)


class Sender:
    def __init__(self, settings: Settings, gateway: TwilioGateway, optouts: OptOuts) -> None:
        self._settings = settings
        self._gateway = gateway
        self._optouts = optouts

    def status_callback(self) -> str | None:
        return self._settings.public_url.rstrip("/") + "/twilio/status" if self._settings.public_url else None

    def account_for(self, number: PhoneNumber) -> str | None:
        return number.twilio_account_sid or self._settings.twilio_account_sid

    async def send_text(
        self, conv: Conversation, number: PhoneNumber, text: str, *, max_segments: int,
    ) -> list[Message]:
        """Send ``text`` as one or more SMS; the agent messages to record (failed sends included)."""
        sent: list[Message] = []
        for part in segments.split(segments.sanitize(text), max_segments):
            if await self._optouts.is_opted_out(conv):
                log.info("not sending: user opted out", extra={"conv": conv.tag})
                break
            message = await self._send_part(conv, number, part)
            sent.append(message)
            if message.status == "failed":
                break
        return sent

    async def _send_part(self, conv: Conversation, number: PhoneNumber, part: str) -> Message:
        measure = segments.measure(part)
        message = Message(Role.AGENT, content=part, created_timestamp=now_ms(),
                          encoding=measure.encoding.value, segments=measure.segments)
        account = self.account_for(number)
        try:
            if account is None:
                raise SendError(f"no Twilio account for {number.phone_number} (set TWILIO_ACCOUNT_SID)")
            result = await self._gateway.send(account_sid=account, from_=conv.agent_number, to=conv.user_number,
                                              body=part, status_callback=self.status_callback())
        except RecipientUnsubscribed as exc:
            await self._optouts.record(conv)
            message.status, message.error_code = "failed", exc.code
            log.info("twilio says the user unsubscribed; opt-out recorded", extra={"conv": conv.tag})
            return message
        except SendError as exc:
            message.status, message.error_code = "failed", exc.code
            log.warning("send failed", extra={"conv": conv.tag, "error": str(exc), "code": exc.code})
            return message
        message.message_sid, message.status = result.sid, result.status
        log.info("sms sent", extra={"conv": conv.tag, "message_sid": result.sid, "segments": measure.segments})
        return message
