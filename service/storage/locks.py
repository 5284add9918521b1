"""Token locks in Redis (``SET NX PX`` + compare-and-delete), and a conversation's lock as a write fence.

``Locks`` takes, waits for, renews and releases a lock by key: the conversation queue's turn locks and an
API chat's completion lock. ``Hold`` is a conversation lock someone holds: the chat store's commit script
writes under it only while the lock is still the holder's (fencing), and says what it did with the lock
(``Release``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import IntEnum

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.address import Conversation
from service.errors import Conflict
from service.tasks import stop_task

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

log = logging.getLogger(__name__)

POLL_S = 0.05
WAIT_S = 10.0   # how long an API request waits for a lock before answering 409


@dataclass(frozen=True, slots=True)
class Hold:
    """A conversation's lock, held with ``token``; ``entry_id`` is the wake-up a worker answers ("" when the
    API or outreach holds it)."""

    conv: Conversation
    token: str
    entry_id: str = ""


class Release(IntEnum):
    """What a fenced write (or a release) did with the conversation's lock."""

    RELEASED = 1      # the mailbox was empty: the lock is gone and the wake-up acknowledged
    MORE_WORK = 0     # the mailbox has more: the holder keeps the lock for the next turn
    LOST = -1         # the lock was no longer the holder's: nothing was written


def new_token() -> str:
    return secrets.token_hex(16)


class Locks:
    def __init__(self, redis: aioredis.Redis, *, ttl_ms: int) -> None:
        self._redis = redis
        self.ttl_ms = ttl_ms
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self, key: str, token: str | None = None) -> str | None:
        """Take the lock now; its token, or None when someone holds it."""
        token = token or new_token()
        return token if await self._redis.set(key, token, nx=True, px=self.ttl_ms) else None

    async def wait(self, key: str, within_s: float) -> str | None:
        """Take the lock, waiting up to ``within_s`` for its holder; None if it stayed taken."""
        deadline = time.monotonic() + within_s
        while (token := await self.acquire(key)) is None:
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(POLL_S)
        return token

    @asynccontextmanager
    async def held(self, key: str, *, busy: str, within_s: float = WAIT_S) -> AsyncIterator[str]:
        """Hold the lock for the ``async with`` block (its token), waiting up to ``within_s``, renewed while the
        block runs; ``Conflict(busy)`` when it stays taken."""
        token = await self.wait(key, within_s)
        if token is None:
            raise Conflict(busy)
        try:
            async with self.kept(key, token):
                yield token
        finally:
            await self.release(key, token)

    @asynccontextmanager
    async def kept(self, key: str, token: str) -> AsyncIterator[None]:
        """Renew the lock every third of its TTL while the block runs: a request that waits on a slow LLM keeps
        what it holds. A renewal cut off by an unreachable Redis is logged and tried again a third of the TTL
        later (the lock outlives one missed renewal). A lock lost anyway, to a stalled process or a longer outage,
        is logged; fenced writes then write nothing."""
        async def renew() -> None:
            while True:
                await asyncio.sleep(self.ttl_ms / 3000)
                try:
                    kept = await self.renew(key, token)
                except (RedisConnectionError, RedisTimeoutError) as exc:   # tried again at the next round
                    log.warning("redis unavailable; retrying", extra={"lock": key, "error": str(exc)})
                    continue
                if not kept:
                    log.warning("a held lock was lost before its holder let go", extra={"lock": key})
                    return

        renewer = asyncio.create_task(renew(), name=f"renew {key}")
        try:
            yield
        finally:
            await stop_task(renewer)

    async def renew(self, key: str, token: str) -> bool:
        return bool(await self._renew(keys=[key], args=[token, self.ttl_ms]))

    async def release(self, key: str, token: str) -> bool:
        return bool(await self._release(keys=[key], args=[token]))
