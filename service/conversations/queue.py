"""The conversation queue: every mailbox, wake-up and turn-lock operation, behind ``ConversationQueue``.

Keys (built in ``storage.keys``; all of one conversation in its partition ``{S}``)::

    {S}:conv:<id>:mailbox          LIST    the conversation's items not yet answered, in arrival order
    {S}:conv:<id>:seen:<sid>       STRING  dedupe marker of an inbound message (24 h)
    {S}:conv:<id>:lock             STRING  the token of whoever holds the conversation (PX lock_ttl_ms)
    {S}:conv:<id>:session          STRING  when the user last wrote, on channels with a session window
    {S}:wakeups                    STREAM  one entry per wake-up, naming the conversation; group ``workers``

Invariants, and where each is kept:

1. *An acknowledged message is never lost.* ``put`` deduplicates, appends to the mailbox and adds a wake-up
   in one script; the webhook answers Twilio only after it.
2. *One holder at a time.* The lock is ``SET NX PX`` with a random token (``take``, ``hold``); every write
   under it checks the token first (the commit script in ``chats.store``, ``release``, ``hand_back``),
   so a holder whose lock expired writes nothing. A worker renews its lock at a third of its TTL (``keep``).
3. *A wake-up is acknowledged only when its mailbox is empty.* The commit that empties the mailbox also
   deletes the lock and XACKs the wake-up, in the same script; otherwise the holder keeps both and runs
   the next turn. A worker that finds the lock taken acknowledges at once (the holder will see the text).
4. *A crashed worker's conversation is picked up.* Its wake-up stays pending; ``reclaim`` hands it to
   another worker after ``reclaim_idle_ms``, by when the dead holder's lock (``lock_ttl_ms``) has expired.
   A holder that is alive keeps its entry's idle time fresh (``keep``).
5. *Texts that arrive while the API holds a conversation are answered.* ``hold`` hands the lock back
   through a script that adds a wake-up when the mailbox is not empty.

The chat store's commit script is the one other place that touches these keys: a turn's results and the
release of its conversation must be one atomic write. It takes the holder's ``Hold`` as its fence.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from service.address import Conversation
from service.clock import now_ms
from service.conversations.items import Item
from service.errors import Conflict
from service.storage import keys
from service.storage.locks import WAIT_S, Hold, Locks, Release, new_token
from service.storage.pipelining import evalsha, pipelined

log = logging.getLogger(__name__)

BUSY = "the conversation is busy with a turn; try again"

# KEYS: seen, mailbox, wakeups, session (left alone when the channel has no session window).
# ARGV: item, conversation id, session ttl s ('' none), now ms. The bounds are written in (``storage.keys``): a
# webhook's one Redis call sends what changes only.
# Returns an Enqueued value.  A full mailbox forgets the SID again, so a retry can land.
_ENQUEUE = f"""
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', {keys.SEEN_TTL_S}) then return 0 end
if redis.call('RPUSH', KEYS[2], ARGV[1]) > {keys.MAILBOX_CAP} then
  redis.call('RPOP', KEYS[2])
  redis.call('DEL', KEYS[1])
  return 2
end
redis.call('EXPIRE', KEYS[2], {keys.MAILBOX_TTL_S})
redis.call('XADD', KEYS[3], 'MAXLEN', '~', {keys.WAKEUPS_MAXLEN}, '*', 'conv', ARGV[2])
if ARGV[3] ~= '' then redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[3]) end
return 1
"""

# KEYS: lock, mailbox, wakeups.  ARGV: token, wake-up entry id ('' none), consumer group.  A Release value.
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


@dataclass(frozen=True, slots=True)
class Wakeup:
    """A stream entry that names a conversation to run; ``reclaimed`` when taken over from a dead worker."""

    entry_id: str
    conv: Conversation
    reclaimed: bool = False


# Reads of the caller's that ``take`` and ``peek`` add to their round trip: commands (and their arguments) on keys of
# the conversation's partition.
Reads = Sequence[Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Taken:
    """What ``take`` and ``peek`` read in their round trip."""

    taken: bool                   # the lock is now the caller's (always True for ``peek``)
    items: list[Item]             # the whole mailbox
    values: list[str | None]      # the strings at the ``with_keys`` asked for
    also: list[Any]               # the replies to the ``also`` reads, in their order


class ConversationQueue:
    """Mailboxes, wake-ups and turn locks. One per process (``Runtime.queue``)."""

    def __init__(self, redis: aioredis.Redis, *, lock_ttl_ms: int) -> None:
        self._redis = redis
        self._locks = Locks(redis, ttl_ms=lock_ttl_ms)
        self._enqueue = redis.register_script(_ENQUEUE)
        self._release = redis.register_script(_RELEASE)
        self._hand_back = redis.register_script(_HAND_BACK)
        self.streams = [keys.wakeups(shard) for shard in range(keys.SHARDS)]

    @property
    def lock_ttl_ms(self) -> int:
        return self._locks.ttl_ms

    # The webhooks' side.

    async def put(self, conv: Conversation, item: Item, *, dedupe_id: str, session_ttl_s: int | None = None,
                  ) -> Enqueued:
        """Append ``item`` and wake a worker, unless ``dedupe_id`` was seen. ``session_ttl_s``: the user wrote,
        on a channel with a session window of that length (``in_session``)."""
        result = await evalsha(
            self._redis, self._enqueue,
            keys=[keys.seen(conv, dedupe_id), keys.mailbox(conv), keys.wakeups(conv.shard), keys.session(conv)],
            args=[item.to_json(), conv.id, session_ttl_s or "", now_ms()],
        )
        return Enqueued(int(result))

    async def note_session(self, conv: Conversation, session_ttl_s: int) -> None:
        """The user wrote something that takes no turn (HELP, START): their session window opens all the same."""
        await self._redis.set(keys.session(conv), now_ms(), ex=session_ttl_s)

    async def in_session(self, conv: Conversation) -> bool:
        """True while the user's last message is within its channel's session window."""
        return bool(await self._redis.exists(keys.session(conv)))

    # The workers' side: wake-ups.

    async def ensure_groups(self) -> None:
        """Create the consumer group on every partition's stream (idempotent)."""
        for stream in self.streams:
            try:
                await self._redis.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(self, consumer: str, streams: Sequence[str], count: int, *, block_ms: int) -> list[Wakeup]:
        """New wake-ups from ``streams`` (one ``XREADGROUP``), waiting up to ``block_ms`` for one."""
        reply: Any = await self._redis.xreadgroup(
            keys.WORKER_GROUP, consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms)
        return [Wakeup(entry_id, Conversation.parse(fields["conv"]))
                for _stream, entries in reply or [] for entry_id, fields in entries]

    async def reclaim(self, consumer: str, stream: str, count: int, *, min_idle_ms: int) -> list[Wakeup]:
        """Wake-ups of ``stream`` pending longer than ``min_idle_ms`` (their worker died), now ``consumer``'s."""
        # From the stream's start (xautoclaim's start_id "0-0"). An entry deleted meanwhile comes back as
        # (None, None) from Redis 6.2; later versions list those apart, in reply[2].
        reply: Any = await self._redis.xautoclaim(
            stream, keys.WORKER_GROUP, consumer, min_idle_time=min_idle_ms, count=count)
        claimed: list[tuple[str, dict[str, str]]] = [entry for entry in reply[1] if entry[1]]
        if claimed:
            log.info("reclaimed stale wake-ups", extra={"count": len(claimed)})
        return [Wakeup(entry_id, Conversation.parse(fields["conv"]), reclaimed=True) for entry_id, fields in claimed]

    async def ack(self, conv: Conversation, entry_id: str) -> None:
        await self._redis.xack(keys.wakeups(conv.shard), keys.WORKER_GROUP, entry_id)

    # The workers' side: the lock and the mailbox.

    async def take(self, conv: Conversation, token: str, *, with_keys: Sequence[str] = (), also: Reads = (),
                   ) -> Taken:
        """Take the conversation's lock with ``token``, and read its mailbox, ``with_keys`` (strings in the
        conversation's partition) and what ``also`` adds, in one round trip."""
        return await self._read(conv, token, with_keys, also)

    async def peek(self, conv: Conversation, *, with_keys: Sequence[str] = (), also: Reads = ()) -> Taken:
        """Read the mailbox, ``with_keys`` and ``also`` (the holder, between turns)."""
        return await self._read(conv, None, with_keys, also)

    async def _read(self, conv: Conversation, token: str | None, with_keys: Sequence[str], also: Reads,
                    ) -> Taken:
        commands: list[Sequence[Any]] = [] if token is None else [
            ("SET", keys.lock(conv), token, "NX", "PX", self._locks.ttl_ms)]
        commands.append(("LRANGE", keys.mailbox(conv), 0, -1))
        if with_keys:
            # By name, as every command here: redis-py's cluster pipeline refuses its ``mget`` method (keys could span
            # slots); these share the conversation's.
            commands.append(("MGET", *with_keys))
        commands += also
        replies = await pipelined(self._redis, commands)
        taken = bool(replies.pop(0)) if token is not None else True
        values = list(replies[1]) if with_keys else []
        return Taken(taken, [Item.from_json(raw) for raw in replies[0]], values, replies[2 if with_keys else 1:])

    async def keep(self, hold: Hold, consumer: str) -> bool:
        """Renew the holder's lock and keep its wake-up from looking abandoned; False once the lock is lost."""
        if not await self._locks.renew(keys.lock(hold.conv), hold.token):
            return False
        await self._redis.xclaim(keys.wakeups(hold.conv.shard), keys.WORKER_GROUP, consumer,
                                 0,  # pragma: no mutate (1 ms: keep runs every lock_ttl/3, the entry is always idler)
                                 [hold.entry_id], justid=True)   # JUSTID: a renewal is not a delivery
        return True

    async def release(self, hold: Hold) -> Release:
        """Release the lock (acknowledging the wake-up) if the mailbox is empty; else keep it: another turn is
        due. For a holder that committed nothing this time."""
        conv = hold.conv
        return Release(int(await self._release(keys=[keys.lock(conv), keys.mailbox(conv), keys.wakeups(conv.shard)],
                                               args=[hold.token, hold.entry_id, keys.WORKER_GROUP])))

    async def abandon(self, hold: Hold) -> None:
        """Drop the lock without looking at the mailbox (the wake-up stays pending and will be reclaimed)."""
        await self._locks.release(keys.lock(hold.conv), hold.token)

    # The API's side.

    @asynccontextmanager
    async def hold(self, conv: Conversation, *, within_s: float = WAIT_S) -> AsyncIterator[Hold]:
        """Hold ``conv`` for the ``async with`` block, as a turn does, so what the block sends is ordered with
        the agent's replies; ``Conflict`` when a turn keeps it longer than ``within_s``. The lock is renewed
        while the block runs (a slow LLM writing the text keeps it). On the way out, texts that arrived
        meanwhile get a wake-up."""
        token = await self._locks.wait(keys.lock(conv), within_s)
        if token is None:
            raise Conflict(BUSY)
        hold = Hold(conv, token)
        try:
            async with self._locks.kept(keys.lock(conv), token):
                yield hold
        finally:
            await self._hand_back(keys=[keys.lock(conv), keys.mailbox(conv), keys.wakeups(conv.shard)],
                                  args=[token, conv.id, keys.WAKEUPS_MAXLEN])

    def new_token(self) -> str:
        return new_token()
