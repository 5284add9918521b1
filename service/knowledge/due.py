"""The ingestion work queue, ``{knowledge}:due`` (knowledge base id -> when it next needs work, in ms): scheduled by
the API, the folders and ``Ingestion.recover``, claimed by ``Ingestion.tick`` with a lease.

Claiming moves a member's score a lease ahead in one script, so exactly one process works on a knowledge base
at a time; the holder renews the lease while it works (``extend``) and gives it back with when the knowledge
base next needs work (``release``). A member the API scheduled again meanwhile is left as the API set it, so new
work is not lost to a release. A holder that dies leaves the member due when its lease runs out.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from service.clock import now_ms
from service.storage import keys

# KEYS: due.  ARGV: now ms, lease ms.  The earliest due knowledge base, leased: {id, leased score}, or nil.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #due == 0 then return false end
local leased = tonumber(ARGV[1]) + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], leased, due[1])
return {due[1], tostring(leased)}
"""

# KEYS: due.  ARGV: id, leased score, new score ('' to remove).  Only while the lease is still the caller's: a
# knowledge base the API scheduled meanwhile stays due.
_MOVE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then redis.call('ZREM', KEYS[1], ARGV[1]) else redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) end
return 1
"""


class WorkQueue:
    """``{knowledge}:due``."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._move = redis.register_script(_MOVE)

    async def schedule(self, kb_id: str, when: int | None = None, *, only_new: bool = False) -> int:
        """Ask for ingestion work on ``kb_id`` at ``when`` (now when None); ``only_new``: unless it is due already.
        Answers 1 when scheduled."""
        added = await self._redis.zadd(keys.KNOWLEDGE_DUE, {kb_id: now_ms() if when is None else when}, nx=only_new)
        return int(added or 0) if only_new else 1

    async def claim(self, now: int, lease_ms: int) -> tuple[str, int] | None:
        """The earliest due knowledge base, leased to the caller until ``now + lease_ms``."""
        found = await self._claim(keys=[keys.KNOWLEDGE_DUE], args=[now, lease_ms])
        return (str(found[0]), int(float(found[1]))) if found else None

    async def extend(self, kb_id: str, leased: int, until: int) -> int:
        """Move the caller's lease to ``until``; the lease it holds now (unchanged if it lost it)."""
        moved = await self._move(keys=[keys.KNOWLEDGE_DUE], args=[kb_id, leased, until])
        return until if moved else leased

    async def release(self, kb_id: str, leased: int, when: int | None) -> None:
        """End the caller's lease: due again at ``when``, or not due (None)."""
        await self._move(keys=[keys.KNOWLEDGE_DUE], args=[kb_id, leased, "" if when is None else when])
