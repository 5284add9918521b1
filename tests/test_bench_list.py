"""The list benchmark writes its 100k chats with raw commands; this holds its keys equal to ``Chats.create``'s."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import redis.asyncio as aioredis

from bench.list import TTL_S, make_chats, write_chats
from service.chats.store import Chats

from .conftest import is_cluster


async def snapshot(redis: aioredis.Redis) -> dict[str, Any]:
    """Every key: its type, whether it has a TTL, and its content."""
    found: dict[str, Any] = {}
    async for key in redis.scan_iter(match="parley:*"):
        kind = await redis.type(key)
        content: Any = {"hash": redis.hgetall, "zset": lambda k: redis.zrange(k, 0, -1, withscores=True),
                        "string": redis.get}[str(kind)](key)
        found[key] = (kind, await redis.ttl(key) > 0, await content)
    return found


async def test_the_benchmark_writes_what_chats_create_writes(redis: aioredis.Redis, redis_url: str) -> None:
    if is_cluster(redis_url):
        pytest.skip("the benchmark writes to a single server")
    chats = make_chats(400)
    assert len({c.chat_status for c in chats}) == len({c.chat_type for c in chats}) == 2   # every index is written
    where = redis.connection_pool.connection_kwargs
    await write_chats(int(where.get("port", 6379)), copy.deepcopy(chats), host=str(where.get("host", "127.0.0.1")),
                      db=int(where.get("db", 0)))
    written = await snapshot(redis)
    assert len(written) > 1_000
    await redis.flushdb()
    store = Chats(redis, ttl_s=TTL_S, lock_ttl_ms=30_000)
    for chat in copy.deepcopy(chats):
        await store.create(chat)
    assert written == await snapshot(redis)
