"""The outgoing queue: messages that wait for Twilio, per conversation, in order, tried again by any process.

When Twilio refuses a send for now (HTTP 429, a 5xx, a refused connection: ``errors.SendDeferred``), the
message, and every later message of its conversation, waits here instead of failing. The resend loop
(``conversations.resend``) tries the head again with backoff, honouring Twilio's ``Retry-After``, for at most
``PARLEY_SEND_RETRY_FOR_S`` after the message was written; then it fails for good, and so does everything
queued behind it (written after it, they assume the user read it).

Keys (built in ``storage.keys``; all in the conversation's partition ``{S}``, which is also its chats')::

    {S}:conv:<id>:outgoing   LIST    waiting messages, oldest first: ``chats.delivery.outgoing_entry`` JSON (the
                                     chat id, the message as recorded, attempts so far); at most OUTGOING_CAP plus
                                     one reply's parts; TTL OUTGOING_TTL_S from the last push
    {S}:conv:<id>:deferred   STRING  a send was deferred and the commit that queues it has not run yet; TTL
                                     DEFERRED_TTL_S, deleted by that commit
    {S}:outgoing:due         ZSET    conversation id -> when its head is next tried (ms); one member per
                                     conversation with messages waiting; popped with a lease (``DueSet``)
    {S}:chat:<C>:delivery    HASH    message id -> the SID a waiting message got, or why it failed
                                     (``chats.delivery``: laid over the chat's messages when it is read)
    {S}:outbox:<C>           LIST    chat C's events; a failure for good queues ``transcript_updated`` here
    {S}:outbox:due           ZSET    (``webhooks.events``)

Invariants, and where each is kept:

1. *Recorded and queued together.* A waiting message is recorded in its chat with the status ``retrying`` and
   no SID by the commit of the turn that wrote it, and the same script pushes its entry (``chats.store``). A
   crash before that commit leaves neither (the turn runs again); after it, both.
2. *In order, never overtaken.* Only the holder of the conversation's lock pushes, sends or removes entries: a
   turn, whose sender queues any message behind waiting ones (``gate``: the queue, or a deferral its commit has
   not queued yet, ``defer``), or the resend loop, which holds the conversation with ``ConversationQueue.hold``.
   Every write that removes or rewrites an entry checks that the head is still the entry it read; the loop's
   writes also check the lock token, except ``settle``.
3. *What Twilio accepted is recorded.* ``settle`` pops the head and records its SID even if the lock expired
   meanwhile: the message went out, and a second send would duplicate it.
4. *Every entry ends.* It is sent, or it fails for good (time up, a final Twilio error, the user opted out,
   the number is gone) and a ``transcript_updated`` event reports it: a failed message is always reported.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson
import redis.asyncio as aioredis

from service.address import Conversation
from service.chats.model import Message, Role
from service.storage import keys
from service.storage.dueset import DueSet
from service.storage.locks import Hold
from service.storage.pipelining import pipelined

MAX_DELAY_MS = 60_000        # the longest backoff between two tries (a longer Retry-After is still honoured)
READ_CAP = 2 * keys.OUTGOING_CAP
KNOWN_CAP = 10_000           # due times a process remembers it set (beyond, the resend loop's idle poll finds them)

# KEYS: outgoing, delivery, lock.  ARGV: head entry, message id, state JSON, ttl s, token.
# Returns 2 when the head was this entry (now popped) and the lock is still the token's, 1 when popped but the
# lock is gone (stop here), 0 when the head was another entry (the state is recorded all the same).
_SETTLE = """
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[1] then return 0 end
redis.call('LPOP', KEYS[1])
if redis.call('GET', KEYS[3]) == ARGV[5] then return 2 end
return 1
"""

# KEYS: lock, outgoing, due.  ARGV: token, head entry, new entry, due ms, conversation id.  1 when rescheduled.
_LATER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('LINDEX', KEYS[2], 0) ~= ARGV[2] then return 0 end
redis.call('LSET', KEYS[2], 0, ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
return 1
"""

# KEYS: lock, outgoing, outbox due, then per chat: its delivery hash, its outbox.
# ARGV[1]: JSON plan: token, head (the entry expected first), count (entries to drop from the head), now (ms),
# ttl (s), chats: [{fields: [message id, state, ...], events: [event JSON, ...]}, ...] in KEYS' order.
# 1 when done; -1 when the lock is not the token's, 0 when the head moved (nothing written either way).
_FAIL = """
local p = cjson.decode(ARGV[1])
if redis.call('GET', KEYS[1]) ~= p.token then return -1 end
if redis.call('LINDEX', KEYS[2], 0) ~= p.head then return 0 end
redis.call('LTRIM', KEYS[2], p.count, -1)
for i, chat in ipairs(p.chats) do
  local delivery, outbox = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  if #chat.fields > 0 then
    redis.call('HSET', delivery, unpack(chat.fields))
    redis.call('EXPIRE', delivery, p.ttl)
  end
  if #chat.events > 0 then
    redis.call('RPUSH', outbox, unpack(chat.events))
    redis.call('EXPIRE', outbox, p.ttl)
    redis.call('ZADD', KEYS[3], 'NX', p.now, chat.id)
  end
end
return 1
"""

# KEYS: outgoing, due.  ARGV: conversation id, leased score, now ms.  Unless the run re-scheduled the
# conversation (its score is no longer the lease): drop it from the due set when nothing waits, or make it due now
# when something still does (the run stopped early: it read at most READ_CAP entries, or lost the lock).
# Returns 2 when made due now, 1 when dropped, 0 when left as it was.
_FINISH = """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if redis.call('LLEN', KEYS[1]) > 0 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  return 2
end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


class Gate(Enum):
    """May a message of the conversation go now?"""

    CLEAR = "clear"            # nothing waits and the user has not opted out
    OPTED_OUT = "opted_out"
    WAITING = "waiting"        # earlier messages wait: this one queues behind them
    FULL = "full"              # so many wait that this one fails at once


@dataclass(frozen=True, slots=True)
class Waiting:
    """One entry of the outgoing queue, as read (``raw``: its exact JSON, which the writes compare)."""

    raw: str
    chat_id: str
    message: Message
    attempts: int

    @classmethod
    def parse(cls, raw: str) -> Waiting:
        data = orjson.loads(raw)
        fields = dict(data["message"])
        fields["role"] = Role(fields["role"])
        return cls(raw, data["chat_id"], Message(**fields), int(data.get("attempts", 0)))

    def tried(self, error: str | None) -> str:
        """This entry after one more failed try, as JSON."""
        data = orjson.loads(self.raw)
        data["attempts"] = self.attempts + 1
        if error:
            data["message"]["error"] = error
        return orjson.dumps(data).decode()


@dataclass(frozen=True, slots=True)
class Failure:
    """A waiting message that will not be sent: its entry, and its delivery state (``chats.delivery.failed_state``)."""

    entry: Waiting
    state: str


def retry_delay_ms(attempts: int, base_ms: int, retry_after_s: float | None = None) -> int:
    """How long to wait before the next try, after ``attempts`` failed ones (0: the first just failed):
    ``base_ms`` doubling, at most MAX_DELAY_MS, with jitter (x0.5-1.5) so conversations throttled together do not
    come back together; never sooner than Twilio's ``Retry-After`` (plus up to 20%, for the same reason)."""
    doublings = min(attempts, 30)  # pragma: no mutate (2^30 x base_ms is past MAX_DELAY_MS: 30 or 31, alike)
    delay = min(base_ms * 2 ** doublings, MAX_DELAY_MS) * random.uniform(0.5, 1.5)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s * 1000 * random.uniform(1.0, 1.2))
    return int(delay)


class Outgoing:
    """The outgoing queue's Redis side. One per process (``Runtime.outgoing``)."""

    def __init__(self, redis: aioredis.Redis, *, chat_ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = chat_ttl_s
        self.due = DueSet(redis, keys.outgoing_due)
        self._settle = redis.register_script(_SETTLE)
        self._later = redis.register_script(_LATER)
        self._fail = redis.register_script(_FAIL)
        self._finish = redis.register_script(_FINISH)
        self._known: list[int] = []   # a heap of the due times this process set, not yet reached

    def _note(self, when_ms: int) -> None:
        if len(self._known) < KNOWN_CAP:
            heapq.heappush(self._known, when_ms)

    def due_by(self, now: int) -> bool:
        """True when a due time this process set has come (forgetting those): the resend loop looks at Redis
        then, and otherwise only every so often (for what other processes left)."""
        came = False
        while self._known and self._known[0] <= now:
            heapq.heappop(self._known)
            came = True
        return came

    async def gate(self, conv: Conversation) -> Gate:
        """Whether a message of ``conv`` may go now. One command when the answer is CLEAR (the usual case: it
        replaces the opt-out check every send makes), two otherwise."""
        waits = ("EXISTS", keys.optout(conv), keys.outgoing(conv), keys.deferred(conv))
        [found] = await pipelined(self._redis, [waits])
        if not found:
            return Gate.CLEAR
        opted_out, waiting, deferred = await pipelined(self._redis, [
            ("EXISTS", keys.optout(conv)), ("LLEN", keys.outgoing(conv)), ("EXISTS", keys.deferred(conv))])
        if opted_out:
            return Gate.OPTED_OUT
        if waiting >= keys.OUTGOING_CAP:
            return Gate.FULL
        # CLEAR here only if the keys vanished between the two round trips, which no test can time.
        return Gate.WAITING if waiting or deferred else Gate.CLEAR  # pragma: no mutate (a race only)

    async def defer(self, conv: Conversation, when_ms: int) -> None:
        """A send of ``conv`` was just deferred (its turn's commit will queue it): until that commit, later
        messages of the conversation wait behind it, even those of another ``send_text`` call of the same turn
        (a tool's text, then the reply); its queue is due at ``when_ms``."""
        async with self._redis.pipeline(transaction=True) as pipe:  # pragma: no mutate (MULTI: atomicity only)
            pipe.set(keys.deferred(conv), 1, ex=keys.DEFERRED_TTL_S)  # pragma: no mutate (value never read)
            pipe.zadd(keys.outgoing_due(conv.shard), {conv.id: when_ms})
            await pipe.execute()
        self._note(when_ms)

    async def schedule(self, conv: Conversation, when_ms: int) -> None:
        """Try ``conv``'s waiting messages at ``when_ms``."""
        await self.due.at(conv.id, when_ms)
        self._note(when_ms)

    async def entries(self, conv: Conversation) -> list[Waiting]:
        """The conversation's waiting messages, oldest first."""
        raws = await self._redis.lrange(keys.outgoing(conv), 0, READ_CAP - 1)
        return [Waiting.parse(str(raw)) for raw in raws]

    async def settle(self, hold: Hold, entry: Waiting, state: str) -> bool:
        """Twilio accepted the head ``entry``: pop it and record its SID (``state``); True while the caller may
        go on with the next entry (the head was this one and the lock is still the caller's)."""
        done = await self._settle(keys=[keys.outgoing(hold.conv), keys.delivery(entry.chat_id), keys.lock(hold.conv)],
                                  args=[entry.raw, entry.message.message_id, state, self._ttl_s, hold.token])
        return int(done) == 2

    async def later(self, hold: Hold, entry: Waiting, when_ms: int, error: str | None) -> bool:
        """Twilio refused the head ``entry`` for now: count the try and come back at ``when_ms``."""
        conv = hold.conv
        done = await self._later(keys=[keys.lock(conv), keys.outgoing(conv), keys.outgoing_due(conv.shard)],
                                 args=[hold.token, entry.raw, entry.tried(error), when_ms, conv.id])
        self._note(when_ms)
        return int(done) == 1

    async def fail(self, hold: Hold, failures: Sequence[Failure], events: dict[str, list[str]], now: int) -> bool:
        """Drop the first ``len(failures)`` entries (they will not be sent), record why in their chats'
        delivery hashes, and queue ``events`` (chat id -> event JSONs) in those chats' outboxes; one write."""
        conv = hold.conv
        chats: dict[str, dict[str, Any]] = {}
        for failure in failures:
            chat = chats.setdefault(failure.entry.chat_id, {"id": failure.entry.chat_id, "fields": [], "events": []})
            chat["fields"] += [failure.entry.message.message_id, failure.state]
        for chat_id, bodies in events.items():
            chats.setdefault(chat_id, {"id": chat_id, "fields": []})["events"] = bodies
        chat_keys = [key for chat_id in chats for key in (keys.delivery(chat_id), keys.outbox(chat_id))]
        plan = {"token": hold.token, "head": failures[0].entry.raw, "count": len(failures), "now": now,
                "ttl": self._ttl_s, "chats": list(chats.values())}
        done = await self._fail(keys=[keys.lock(conv), keys.outgoing(conv), keys.outbox_due(conv.shard), *chat_keys],
                                args=[orjson.dumps(plan).decode()])
        return int(done) == 1

    async def finish(self, conv: Conversation, leased: int, now: int) -> None:
        """After a run over ``conv``'s queue (which held it with the lease ``leased``): forget the conversation
        in the due set if nothing waits, or come back at once if the run stopped early."""
        if int(await self._finish(keys=[keys.outgoing(conv), keys.outgoing_due(conv.shard)],
                                  args=[conv.id, leased, now])) == 2:
            self._note(now)
