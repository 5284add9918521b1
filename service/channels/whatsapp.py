"""WhatsApp through Twilio: the same webhook and Messages API as SMS, addresses ``whatsapp:+E164``.

WhatsApp has no segments and no GSM-7: a message is up to 1,600 characters of any text and costs the
same whatever it holds, so a reply is neither rewritten nor split (a runaway one is cut at a sentence
end). WhatsApp lets a business write freely only within 24 hours of the user's last message (the
customer service window); outside it only pre-approved templates may be sent, so Parley refuses to start
or continue a conversation there (``conversations.outreach`` and the sender check the window).
"""

from __future__ import annotations

from dataclasses import dataclass

from service.address import address
from service.channels.sms import bounded
from service.sms.segments import GSM_SEGMENT_CHARS, MAX_BODY_CHARS, Measure

SESSION_WINDOW_S = 24 * 3600
INSTRUCTIONS = (
    "\n\n## Channel\nYou are chatting with the user on WhatsApp. Reply in plain text: no markdown headings, "
    "tables or links in brackets. Keep each reply short, at most about {chars} characters."
)


@dataclass(frozen=True, slots=True)
class WhatsAppChannel:
    name: str = "whatsapp"
    session_window_s: int | None = SESSION_WINDOW_S
    counts_segments: bool = False

    def address(self, number: str) -> str:
        return address(self.name, number)

    def parts(self, text: str, *, exact: bool, max_segments: int) -> list[str]:
        return [text if exact else bounded(text.strip(), MAX_BODY_CHARS)]

    def instructions(self, max_segments: int) -> str:
        return INSTRUCTIONS.format(chars=min(MAX_BODY_CHARS, GSM_SEGMENT_CHARS * max_segments))

    def measure(self, part: str) -> Measure | None:
        return None
