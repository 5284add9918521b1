"""Opt-outs per conversation (agent number, user number, channel), and the list of them.

Every sending path checks ``is_opted_out`` right before it sends. The opt-out itself is
``conv:<id>:optout`` (so a turn reads it with the conversation's other keys); ``optouts`` lists them all
for operators, each side written as an address (``whatsapp:+1...`` off SMS). Clearing one by hand needs a
stated proof of consent, which is logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from service.address import Conversation, address, split_address
from service.clock import now_ms
from service.errors import InvalidRequest, NotFound
from service.metrics import Metrics
from service.storage import keys

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OptOut:
    agent_number: str
    user_number: str
    opted_out_at: int


def _member(conv: Conversation) -> str:
    return f"{address(conv.channel, conv.agent_number)} {address(conv.channel, conv.user_number)}"


class OptOuts:
    def __init__(self, redis: aioredis.Redis, metrics: Metrics) -> None:
        self._redis = redis
        self._metrics = metrics

    async def record(self, conv: Conversation, source: str = "keyword") -> None:
        self._metrics.optouts.labels(source).inc()
        when = now_ms()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.optout(conv), when, nx=True)
            pipe.zadd(keys.optouts(conv.shard), {_member(conv): when}, nx=True)
            await pipe.execute()

    async def clear(self, conv: Conversation) -> bool:
        """Clear the opt-out; True if there was one."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.optout(conv))
            pipe.zrem(keys.optouts(conv.shard), _member(conv))
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def is_opted_out(self, conv: Conversation) -> bool:
        return bool(await self._redis.exists(keys.optout(conv)))

    async def clear_by_operator(self, from_number: str, to_number: str, consent: str) -> None:
        """An operator clears ``to_number``'s opt-out of ``from_number`` (addresses, as listed), stating how the
        user consented again (logged). ``InvalidRequest`` for numbers on two channels, ``NotFound`` when there
        is no such opt-out. The API's ``/clear-opt-out`` and the console both clear through here."""
        (channel, to), (from_channel, agent) = split_address(to_number), split_address(from_number)
        if from_channel != channel:
            raise InvalidRequest(f"to_number: {to_number} is on {channel}, from_number {from_number} is not: "
                                 "write both numbers with the same channel prefix (whatsapp:+1...) or neither")
        if not await self.clear(Conversation(agent, to, channel)):
            raise NotFound(f"{to_number} has not opted out of {from_number}")
        log.warning("opt-out cleared by an operator", extra={"from": from_number, "to": to_number, "consent": consent})

    async def all(self, agent_number: str | None = None) -> list[OptOut]:
        """Every opt-out (of one number, if given), oldest first."""
        out = []
        # No transaction: the partitions are in different cluster slots. (transaction=None is falsy like False.)
        async with self._redis.pipeline(transaction=False) as pipe:  # pragma: no mutate (None: equivalent)
            for shard in range(keys.SHARDS):
                pipe.zrange(keys.optouts(shard), 0, -1, withscores=True)
            partitions: list[Any] = await pipe.execute()
        for rows in partitions:
            for member, score in rows:
                agent, _, user = str(member).partition(" ")
                if agent_number is None or split_address(agent)[1] == agent_number:
                    out.append(OptOut(agent, user, int(score)))
        return sorted(out, key=lambda o: (o.opted_out_at, o.agent_number, o.user_number))
