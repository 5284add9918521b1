"""A sorted set of things due at a time (ms), popped by any process with a lease.

Popping moves a member's score ``lease_ms`` ahead, so exactly one process handles it; one that dies
while holding it gives it back when the lease runs out. ``done`` removes the member only if nobody
re-scheduled it meanwhile. Inactivity deadlines, event deliveries and post-chat analyses use it.
"""

from __future__ import annotations

import redis.asyncio as aioredis

# KEYS: set.  ARGV: now ms, lease ms, batch.  Returns [member, score, ...] for due members, now leased.
_POP = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
for i = 1, #due, 2 do redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), due[i]) end
return due
"""

# KEYS: set.  ARGV: member, leased score.  Remove the member only if its score is still the lease.
_DONE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""


class DueSet:
    def __init__(self, redis: aioredis.Redis, key: str, *, lease_ms: int = 60_000) -> None:
        self._redis = redis
        self.key = key
        self.lease_ms = lease_ms
        self._pop = redis.register_script(_POP)
        self._done = redis.register_script(_DONE)

    async def pop(self, now: int, batch: int = 100) -> list[tuple[str, int, int]]:
        """Due members as (member, due score, leased score), leased to this caller."""
        due = await self._pop(keys=[self.key], args=[now, self.lease_ms, batch])
        leased = now + self.lease_ms
        return [(str(m), int(float(s)), leased) for m, s in zip(due[::2], due[1::2], strict=True)]

    async def done(self, member: str, leased: int) -> None:
        await self._done(keys=[self.key], args=[member, leased])

    async def at(self, member: str, when: int) -> None:
        """(Re)schedule ``member`` for ``when``."""
        await self._redis.zadd(self.key, {member: when})
