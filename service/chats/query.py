"""Listing chats: Retell's filters, sort order and opaque cursor over the ``chats`` index.

The index orders chats by start time; a page walks it from the cursor in batches, loads each chat and
keeps those the filters accept. Chats whose data expired are dropped from the index on the way.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from service.chats.model import Chat
from service.errors import InvalidRequest
from service.retell.requests import ChatFilter, NumberFilter, RangeFilter, StringFilter
from service.storage import keys

BATCH = 200


def _string_ok(f: StringFilter, value: str) -> bool:
    return {"eq": value == f.value, "ne": value != f.value, "sw": value.startswith(f.value),
            "ew": value.endswith(f.value), "co": f.value in value}[f.op]


def _number_ok(f: NumberFilter | RangeFilter, value: float) -> bool:
    if isinstance(f, RangeFilter):
        return f.value[0] <= value <= f.value[1]
    return {"eq": value == f.value, "ne": value != f.value, "gt": value > f.value, "ge": value >= f.value,
            "lt": value < f.value, "le": value <= f.value}[f.op]


def matches(chat: Chat, f: ChatFilter | None) -> bool:
    """True when ``chat`` passes every filter that is set."""
    if f is None:
        return True
    checks = [
        f.agent is None or any(a.agent_id == chat.agent_id and (not a.version or chat.version in a.version)
                               for a in f.agent),
        f.chat_id is None or _string_ok(f.chat_id, chat.chat_id),
        f.chat_status is None or chat.chat_status.value in f.chat_status.value,
        f.chat_type is None or chat.chat_type.value in f.chat_type.value,
        f.start_timestamp is None or _number_ok(f.start_timestamp, chat.start_timestamp),
    ]
    return all(checks)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: the last chat's start time and id (ties broken by id)."""

    score: int
    chat_id: str

    def encode(self) -> str:
        return base64.urlsafe_b64encode(orjson.dumps([self.score, self.chat_id])).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            score, chat_id = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            return cls(int(score), str(chat_id))
        except (ValueError, TypeError, orjson.JSONDecodeError):
            raise InvalidRequest("pagination_key: not a key returned by a previous list call") from None

    def is_after(self, score: int, chat_id: str, descending: bool) -> bool:
        """True when (score, chat_id) comes after this cursor in the listing order."""
        key, mine = (score, chat_id), (self.score, self.chat_id)
        return key < mine if descending else key > mine


@dataclass
class Page:
    chats: list[Chat]
    has_more: bool
    cursor: Cursor | None
    total: int | None = None


class ChatQuery:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def page(
        self, f: ChatFilter | None, *, descending: bool, limit: int, cursor: Cursor | None, count_total: bool = False,
    ) -> Page:
        """Up to ``limit`` chats after ``cursor`` that pass ``f``, in start-time order."""
        found: list[Chat] = []
        total = 0
        has_more = False
        bound = cursor.score if cursor else None
        offset = 0
        while True:
            batch = await self._batch(descending, bound, offset)
            if not batch:
                break
            chats = await self._load([chat_id for chat_id, _ in batch])
            offset += len(batch) - chats.count(None)   # expired chats were removed from the index
            for (chat_id, score), chat in zip(batch, chats, strict=True):
                if chat is None or (cursor and not cursor.is_after(score, chat_id, descending)):
                    continue
                if not matches(chat, f):
                    continue
                total += 1
                if len(found) < limit:
                    found.append(chat)
                else:
                    has_more = True
            if has_more and not count_total:
                break
        last = Cursor(found[-1].start_timestamp, found[-1].chat_id) if found and has_more else None
        return Page(found, has_more, last, total if count_total else None)

    async def _batch(self, descending: bool, bound: int | None, offset: int) -> list[tuple[str, int]]:
        """Index entries ``offset`` to ``offset + BATCH`` from ``bound`` on, merged across the partitions."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard in range(keys.SHARDS):
                if descending:
                    pipe.zrange(keys.chats(shard), "+inf" if bound is None else bound, "-inf", byscore=True,
                                desc=True, offset=0, num=offset + BATCH, withscores=True)
                else:
                    pipe.zrange(keys.chats(shard), "-inf" if bound is None else bound, "+inf", byscore=True,
                                offset=0, num=offset + BATCH, withscores=True)
            partitions: list[Any] = await pipe.execute()
        merged = sorted(((str(member), int(score)) for rows in partitions for member, score in rows),
                        key=lambda entry: (entry[1], entry[0]), reverse=descending)
        return merged[offset:offset + BATCH]

    async def _load(self, chat_ids: list[str]) -> list[Chat | None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for chat_id in chat_ids:
                pipe.hgetall(keys.chat(chat_id))
            rows = await pipe.execute()
        out: list[Chat | None] = []
        gone = []
        for chat_id, row in zip(chat_ids, rows, strict=True):
            if row:
                out.append(Chat.from_hash({str(k): str(v) for k, v in row.items()}))
            else:
                out.append(None)
                gone.append(chat_id)
        for chat_id in gone:
            await self._redis.zrem(keys.chats(keys.shard_of(chat_id)), chat_id)
        return out
