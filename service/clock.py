"""The wall clock, read in one place: Unix time in milliseconds, as Redis scores and Retell's timestamps use; and
how far off a server's ``Retry-After`` is."""

from __future__ import annotations

import time
from datetime import UTC
from email.utils import parsedate_to_datetime


def now_ms() -> int:
    return int(time.time() * 1000)


def retry_after_s(value: str | None, now_s: float | None = None) -> float | None:
    """A ``Retry-After`` value (RFC 9110: delta-seconds or an HTTP date) in seconds from ``now_s`` (Unix seconds;
    now when None), as written: negative for a date gone by, ``inf`` for ``inf``; None when absent or unreadable.
    Each client bounds it by its own rule (``agent.completions``, ``channels.twilio.gateway``)."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:   # an HTTP date is GMT
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - (time.time() if now_s is None else now_s)
