"""SMS: GSM-7 or UCS-2 segments, look-alike characters rewritten to GSM-7, 1,600 characters a message.

An agent's reply is sanitised (one curly quote would switch the whole text to UCS-2 and double its cost)
and split at sentence ends within ``max_reply_segments``; a runaway reply is first cut to one message's
worth (1,600 characters) at a sentence end. An exact text goes as written, in one message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from service.sms import segments

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "\n\n## Channel\nYou are texting with the user by SMS. Reply in plain text: no markdown, no bullet "
    "lists, no emoji unless the user uses them. Keep each reply short, at most about {chars} characters."
)


def bounded(text: str, limit: int = segments.MAX_BODY_CHARS) -> str:
    """``text`` cut to ``limit`` characters, at the last sentence end when there is one."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    log.warning("reply cut", extra={"chars": len(text), "limit": limit})
    return cut[:end + 1] if end > 0 else cut


@dataclass(frozen=True, slots=True)
class SmsChannel:
    name: str = "sms"
    session_window_s: int | None = None
    counts_segments: bool = True

    def address(self, number: str) -> str:
        return number

    def parts(self, text: str, *, exact: bool, max_segments: int) -> list[str]:
        if exact:
            return [text]
        return segments.split(bounded(segments.sanitize(text)), max_segments)

    def instructions(self, max_segments: int) -> str:
        return INSTRUCTIONS.format(chars=segments.GSM_SEGMENT_CHARS * max_segments)

    def measure(self, part: str) -> segments.Measure:
        return segments.measure(part)
