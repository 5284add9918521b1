"""Which Redis errors mean "Redis cannot serve now" and which mean "Parley sent a wrong command".

An outage (no connection, a timeout, a server loading, failing over, read-only, out of memory or busy with a
script) passes: the HTTP edge answers 503 so the caller tries again, and Twilio does. Any other error Redis
answers with (``WRONGTYPE``, a script's own error, a syntax error) or that redis-py raises before sending
(``DataError``) would be the same on every retry: it is a bug, so the edge answers 500 and logs it as an
error, naming it, instead of blaming an outage that is not there.
"""

from __future__ import annotations

from redis.exceptions import (
    AskError,
    ClusterError,
    DataError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)

# Errors Redis answers with while it cannot serve: a retry after a failover, a load or a script may succeed.
_PASSING = (ClusterError, ReadOnlyError, OutOfMemoryError, TryAgainError, AskError)
# The same, as redis-py leaves them (a plain ResponseError with the server's code first).
_PASSING_CODES = ("BUSY", "LOADING", "MASTERDOWN", "CLUSTERDOWN")


def is_outage(exc: RedisError) -> bool:
    """True when ``exc`` says Redis cannot serve now; False when it says the command was wrong (a bug)."""
    if isinstance(exc, ResponseError | DataError):
        return isinstance(exc, _PASSING) or str(exc).startswith(_PASSING_CODES)
    return True
