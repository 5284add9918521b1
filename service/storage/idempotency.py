"""At most once per key: the first request with an ``Idempotency-Key`` runs; a repeat gets its answer.

``idempotency:<key>`` holds ``pending`` while the first request runs (in any process), then its answer as
JSON, for ``IDEMPOTENCY_TTL_S``. A repeat waits for the answer (Redis is the only place to watch, since
the first may run elsewhere), up to ``wait_s``. A first request that fails with one of the errors it was
told to forget (a refusal: nothing was sent) clears the slot, so the same key may be tried again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

from service.errors import Conflict
from service.storage import keys

PENDING = "pending"
WAIT_S = 15.0
POLL_S = 0.05


class Idempotency:
    def __init__(self, redis: aioredis.Redis, *, wait_s: float = WAIT_S) -> None:
        self._redis = redis
        self._wait_s = wait_s

    async def once(self, key: str, work: Callable[[], Awaitable[Any]],
                   *, forget_on: tuple[type[BaseException], ...] = ()) -> Any:
        """``work()``'s JSON-able answer, run at most once per ``key``; ``Conflict`` when the first run failed."""
        slot = keys.idempotency(key)
        if await self._redis.set(slot, PENDING, nx=True, ex=keys.IDEMPOTENCY_TTL_S):
            try:
                answer = await work()
            except forget_on:
                await self._redis.delete(slot)
                raise
            await self._redis.set(slot, orjson.dumps(answer), ex=keys.IDEMPOTENCY_TTL_S)
            return answer
        async with asyncio.timeout(self._wait_s):
            while (stored := await self._redis.get(slot)) == PENDING:  # noqa: ASYNC110
                await asyncio.sleep(POLL_S)
        if stored is None:
            raise Conflict(f"the first request with Idempotency-Key {key!r} failed; send it again")
        return orjson.loads(stored)
