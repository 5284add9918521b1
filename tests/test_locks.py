"""Token locks (``service.storage.locks``): kept past their TTL while held, through a failed renewal, and a lost
one said so."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.storage.locks import Locks

from .conftest import is_cluster
from .redis_proxy import Proxy

KEY = "parley:test:lock"
TTL_MS = 1_500   # renewed every 0.5 s


def lock_logs(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "service.storage.locks" and r.getMessage() == message]


async def test_a_held_lock_outlives_its_ttl(redis: aioredis.Redis) -> None:
    locks = Locks(redis, ttl_ms=TTL_MS)
    token = await locks.acquire(KEY)
    assert token is not None
    async with locks.kept(KEY, token):
        await asyncio.sleep(TTL_MS / 1000 * 2)
        assert await redis.get(KEY) == token
    assert await locks.release(KEY, token)


async def test_a_renewal_redis_fails_is_tried_again_and_the_lock_kept(
        redis: aioredis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    if is_cluster(redis_url):
        pytest.skip("the proxy stands in front of a single Redis")
    target = urlsplit(redis_url)
    async with Proxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        # A client that gives up at once (no retries), so the failure reaches the renewer within the TTL.
        through = aioredis.Redis.from_url(f"redis://127.0.0.1:{proxy.port}{target.path}", decode_responses=True,
                                          retry=Retry(NoBackoff(), 0))
        async with through:
            locks = Locks(through, ttl_ms=TTL_MS)
            token = await locks.acquire(KEY)
            assert token is not None
            async with locks.kept(KEY, token):
                proxy.cut()                     # the renewal at 0.5 s fails
                await asyncio.sleep(0.75)
                proxy.restore()                 # the one at 1.0 s goes through
                await asyncio.sleep(1.25)       # past the TTL the failed renewal would have left
                assert await redis.get(KEY) == token
            assert await locks.release(KEY, token)
    assert lock_logs(caplog, "redis unavailable; retrying")
    assert not lock_logs(caplog, "a held lock was lost before its holder let go")


async def test_a_lock_lost_while_held_is_logged(redis: aioredis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    locks = Locks(redis, ttl_ms=TTL_MS)
    token = await locks.acquire(KEY)
    assert token is not None
    async with locks.kept(KEY, token):
        await redis.set(KEY, "someone else's")
        await asyncio.sleep(TTL_MS / 1000 / 3 + 0.3)
        assert lock_logs(caplog, "a held lock was lost before its holder let go")
    assert not await locks.release(KEY, token)
    assert await redis.get(KEY) == "someone else's"
