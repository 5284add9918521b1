"""The wall clock, read in one place: Unix time in milliseconds, as Redis scores and Retell's timestamps use."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
