"""Opt-outs per (agent number, user number). Every sending path checks ``is_opted_out`` right before it sends."""

from __future__ import annotations

import redis.asyncio as aioredis

from . import keys
from .keys import Conversation
from .mailbox import now_ms


class OptOuts:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def record(self, conv: Conversation) -> None:
        await self._redis.set(keys.optout(conv), now_ms(), nx=True)

    async def clear(self, conv: Conversation) -> bool:
        """Clear the opt-out; True if there was one."""
        return bool(await self._redis.delete(keys.optout(conv)))

    async def is_opted_out(self, conv: Conversation) -> bool:
        return bool(await self._redis.exists(keys.optout(conv)))
