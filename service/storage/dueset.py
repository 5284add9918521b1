"""A sorted set of things due at a time (ms), one per partition, popped by any process with a lease.

Popping moves a member's score ``lease_ms`` ahead, so exactly one process handles it; one that dies
while holding it gives it back when the lease runs out. ``done`` removes the member only if nobody
re-scheduled it meanwhile. Inactivity deadlines, event deliveries and post-chat analyses use it; their
members are chat ids, each in its chat's partition. A poll reads every partition's earliest member in one
pipeline and runs the popping script only where something is due.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from service.storage import keys

# KEYS: set.  ARGV: now ms, lease ms, batch.  Returns [member, score, ...] for due members, now leased.
_POP = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
for i = 1, #due, 2 do redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), due[i]) end
return due
"""


def done_lua(key: str, member: str, leased: str) -> str:
    """Lua that removes ``member`` from the due set ``key`` only if its score is still ``leased`` (nobody
    re-scheduled it meanwhile), and sets ``forgotten`` to 1 when it did (the arguments are Lua expressions:
    ``KEYS[1]``, ``ARGV[2]``...). ``done`` runs it alone; a script that ends a leased run beside its own writes
    runs it in the same round trip."""
    return f"""
local forgotten = 0
local score = redis.call('ZSCORE', {key}, {member})
if score and tonumber(score) == tonumber({leased}) then forgotten = redis.call('ZREM', {key}, {member}) end
"""


# KEYS: set.  ARGV: member, leased score.
_DONE = done_lua("KEYS[1]", "ARGV[1]", "ARGV[2]") + "return forgotten\n"


class DueSet:
    def __init__(self, redis: aioredis.Redis, key: Callable[[int], str], *, lease_ms: int = 60_000) -> None:
        self._redis = redis
        self.key = key
        self.lease_ms = lease_ms
        self._pop = redis.register_script(_POP)
        self._done = redis.register_script(_DONE)

    async def pop(self, now: int, batch: int = 100) -> list[tuple[str, int, int]]:
        """Due members as (member, due score, leased score), leased to this caller."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard in range(keys.SHARDS):
                pipe.zrange(self.key(shard), "-inf", now, byscore=True, offset=0, num=1)
            heads: list[Any] = await pipe.execute()
        due_shards = [shard for shard, head in enumerate(heads) if head]
        if not due_shards:
            return []
        popped = await asyncio.gather(*(self._pop(keys=[self.key(shard)], args=[now, self.lease_ms, batch])
                                        for shard in due_shards))
        leased = now + self.lease_ms
        return [(str(m), int(float(s)), leased) for due in popped for m, s in zip(due[::2], due[1::2], strict=True)]

    async def done(self, member: str, leased: int) -> None:
        await self._done(keys=[self.key(keys.shard_of(member))], args=[member, leased])

    async def at(self, member: str, when: int) -> None:
        """(Re)schedule ``member`` for ``when``."""
        await self._redis.zadd(self.key(keys.shard_of(member)), {member: when})
