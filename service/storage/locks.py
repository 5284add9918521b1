"""Token locks in Redis (``SET NX PX`` + compare-and-delete): conversations' turn locks and chats' locks."""

from __future__ import annotations

import asyncio
import secrets
import time

import redis.asyncio as aioredis

# KEYS: lock.  ARGV: token, ttl ms.  1 if still ours (and extended), 0 otherwise.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: lock.  ARGV: token.  1 if it was ours and is now released.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

POLL_S = 0.05


class Locks:
    def __init__(self, redis: aioredis.Redis, *, ttl_ms: int) -> None:
        self._redis = redis
        self.ttl_ms = ttl_ms
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self, key: str) -> str | None:
        """Take the lock now; its token, or None when someone holds it."""
        token = secrets.token_hex(16)
        return token if await self._redis.set(key, token, nx=True, px=self.ttl_ms) else None

    async def wait(self, key: str, within_s: float) -> str | None:
        """Take the lock, waiting up to ``within_s`` for its holder; None if it stayed taken."""
        deadline = time.monotonic() + within_s
        while (token := await self.acquire(key)) is None:
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(POLL_S)
        return token

    async def renew(self, key: str, token: str) -> bool:
        return bool(await self._renew(keys=[key], args=[token, self.ttl_ms]))

    async def release(self, key: str, token: str) -> bool:
        return bool(await self._release(keys=[key], args=[token]))
