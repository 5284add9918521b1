"""A conversation's mailbox, its wake-ups and its turn lock (DESIGN.md section 3, steps 3, 5 and 6).

The webhook appends an inbound item to the conversation's mailbox and adds a wake-up naming the
conversation to its partition's ``wakeups`` stream, in one script with the ``MessageSid`` dedupe, so an
acknowledged message always has a wake-up. A worker that takes a wake-up locks the conversation (token +
TTL), drains the mailbox turn by turn, and releases the lock only when the mailbox is empty, in the same
script as the turn's commit (``Lease``), so a message that lands while it works is never left without a
worker. (A text from a user who opted out is dropped by the turn, which reads the opt-out anyway.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

import orjson
import redis.asyncio as aioredis

from service.storage import keys
from service.storage.keys import Conversation
from service.storage.locks import Locks

# KEYS: seen, mailbox, wakeups.  ARGV: item, seen ttl s, cap, mailbox ttl s, conversation id, maxlen.
# Returns an Enqueued value.  A full mailbox forgets the SID again, so a retry can land.
_ENQUEUE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then return 0 end
if redis.call('RPUSH', KEYS[2], ARGV[1]) > tonumber(ARGV[3]) then
  redis.call('RPOP', KEYS[2])
  redis.call('DEL', KEYS[1])
  return 2
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'conv', ARGV[5])
return 1
"""

# KEYS: lock, mailbox, wakeups.  ARGV: token, wake-up entry id ('' none), consumer group.  1 released (and the
# wake-up acknowledged); 0 kept because the mailbox has work; -1 not ours any more.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('LLEN', KEYS[2]) > 0 then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then redis.call('XACK', KEYS[3], ARGV[3], ARGV[2]) end
return 1
"""

# KEYS: lock, mailbox, wakeups.  ARGV: token, conversation id, maxlen.  Release a lock taken outside a worker
# (the API opening a chat); if texts arrived meanwhile, wake a worker for them.
_HAND_BACK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
if redis.call('LLEN', KEYS[2]) > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'conv', ARGV[2])
  return 0
end
return 1
"""


class Enqueued(IntEnum):
    """What happened to an inbound item at the webhook."""

    DUPLICATE = 0
    ACCEPTED = 1
    MAILBOX_FULL = 2


class Release(IntEnum):
    RELEASED = 1
    MORE_WORK = 0
    LOST = -1


@dataclass(slots=True)
class Lease:
    """A worker's hold on a conversation: its lock token and the wake-up it answers. A turn committed under a
    lease writes only while the lock is still the worker's; when it leaves the mailbox empty, the same script
    releases the lock and acknowledges the wake-up, and says so in ``outcome``."""

    conv: Conversation
    token: str
    entry_id: str = ""
    outcome: Release | None = None


class ItemKind(StrEnum):
    TEXT = "text"          # a user's SMS: goes to the LLM
    OPT_OUT = "opt_out"    # the user sent STOP: end the ongoing chat
    INACTIVITY = "inactivity"  # the chat's silence deadline passed: auto-close it


@dataclass(frozen=True, slots=True)
class Media:
    url: str
    content_type: str


@dataclass(frozen=True, slots=True)
class Item:
    """One thing for a conversation's worker to act on, in arrival order."""

    kind: ItemKind
    received_ms: int
    body: str = ""
    message_sid: str | None = None
    media: tuple[Media, ...] = ()
    chat_id: str | None = None       # INACTIVITY: the chat whose deadline passed
    timer_score: int | None = None   # INACTIVITY: the timer's score when it fired (leased)
    raw: str = field(default="", compare=False)  # the stored JSON, for trimming

    def to_json(self) -> str:
        data: dict[str, Any] = {"kind": self.kind, "received_ms": self.received_ms}
        if self.body:
            data["body"] = self.body
        if self.message_sid:
            data["message_sid"] = self.message_sid
        if self.media:
            data["media"] = [{"url": m.url, "content_type": m.content_type} for m in self.media]
        if self.chat_id:
            data["chat_id"] = self.chat_id
        if self.timer_score is not None:
            data["timer_score"] = self.timer_score
        return orjson.dumps(data).decode()

    @classmethod
    def from_json(cls, raw: str) -> Item:
        data = orjson.loads(raw)
        return cls(
            kind=ItemKind(data["kind"]),
            received_ms=int(data["received_ms"]),
            body=data.get("body", ""),
            message_sid=data.get("message_sid"),
            media=tuple(Media(m["url"], m["content_type"]) for m in data.get("media", ())),
            chat_id=data.get("chat_id"),
            timer_score=data.get("timer_score"),
            raw=raw,
        )


class Mailbox:
    """The Redis operations on conversation mailboxes, wake-ups and locks."""

    def __init__(self, redis: aioredis.Redis, locks: Locks) -> None:
        self._redis = redis
        self.locks = locks
        self._enqueue = redis.register_script(_ENQUEUE)
        self._release = redis.register_script(_RELEASE)
        self._hand_back = redis.register_script(_HAND_BACK)

    async def put(self, conv: Conversation, item: Item, *, dedupe_id: str) -> Enqueued:
        """Append ``item`` and wake a worker, unless ``dedupe_id`` was seen."""
        result = await self._enqueue(
            keys=[keys.seen(conv, dedupe_id), keys.mailbox(conv), keys.wakeups(conv.shard)],
            args=[item.to_json(), keys.SEEN_TTL_S, keys.MAILBOX_CAP, keys.MAILBOX_TTL_S, conv.id,
                  keys.WAKEUPS_MAXLEN],
        )
        return Enqueued(int(result))

    async def renew(self, conv: Conversation, token: str) -> bool:
        return await self.locks.renew(keys.lock(conv), token)

    async def abandon(self, conv: Conversation, token: str) -> None:
        """Drop the lock without looking at the mailbox (the wake-up stays pending and will be reclaimed)."""
        await self.locks.release(keys.lock(conv), token)

    async def hand_back(self, conv: Conversation, token: str) -> None:
        """Release a lock taken outside a worker, waking a worker if texts arrived meanwhile."""
        await self._hand_back(keys=[keys.lock(conv), keys.mailbox(conv), keys.wakeups(conv.shard)],
                              args=[token, conv.id, keys.WAKEUPS_MAXLEN])

    async def release(self, lease: Lease) -> Release:
        """Release the lock (acknowledging the wake-up) if the mailbox is empty; otherwise keep it (there is
        another turn to run)."""
        conv = lease.conv
        return Release(int(await self._release(keys=[keys.lock(conv), keys.mailbox(conv), keys.wakeups(conv.shard)],
                                               args=[lease.token, lease.entry_id, keys.WORKER_GROUP])))
