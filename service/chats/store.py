"""Chats in Redis, in Retell's shape: the chat's fields in a hash, its messages in a capped list.

A turn's results (new messages, the consumed mailbox items, the silence deadline, the end of the chat, the
events that report them, the messages that wait for Twilio in the conversation's outgoing queue) are written by
one script (``Chats.commit``), so a crash leaves all of it or none of it. A worker's commit is fenced by its
conversation lock (``storage.locks.Hold``) and, when it empties the mailbox, also releases the lock and
acknowledges the wake-up (``conversations.queue`` says why). All the keys it touches are in the chat's
partition, which is its conversation's (``keys.new_chat_id``), so it runs on Redis Cluster unchanged.

TTLs: a chat's keys live ``chat_ttl_s`` after its last activity, give or take 1/24 of it: a commit refreshes
them only when the last refresh (``touched_ms``) is older than that, which keeps EXPIREs off most turns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from service.address import Conversation
from service.chats.delivery import RETRYING, outgoing_entry
from service.chats.model import Chat, ChatStatus, EndReason, Message, TurnResult, end_reason
from service.clock import now_ms
from service.storage import keys
from service.storage.locks import Hold, Locks, Release
from service.storage.pipelining import evalsha, pipelined
from service.storage.watchers import Watchers
from service.webhooks.events import Event, queue

SENTIMENTS = ("Negative", "Positive", "Neutral", "Unknown")   # Retell's user_sentiment values


def listing_indexes(chat: Chat) -> list[str]:
    """Every listing index (``chats.query``) ``chat`` belongs in, from its fields: ``{S}:chats`` first, then the
    agent's, the type's, the ongoing chats', the direction's, the user's and the agent number's, and once it
    ended its reason's and its end day's, and once analysed its chat_successful's and user_sentiment's."""
    shard = keys.shard_of(chat.chat_id)
    found = [keys.chats(shard), keys.chats_by_agent(shard, chat.agent_id),
             keys.chats_by_type(shard, chat.chat_type.value)]
    if chat.chat_status is ChatStatus.ONGOING:
        found.append(keys.chats_ongoing(shard))
    if chat.direction is not None:
        found.append(keys.chats_by_direction(shard, chat.direction.value))
    if chat.user_number and chat.agent_number:
        found += [keys.chats_by_user(shard, chat.user_number), keys.chats_by_number(shard, chat.agent_number)]
    reason = end_reason(chat.disconnection_reason)
    if reason is not None:
        found.append(keys.chats_by_reason(shard, reason))
    if chat.end_timestamp is not None:
        found.append(keys.chats_ended_on(shard, keys.end_day(chat.end_timestamp)))
    return found + analysis_indexes(chat)


def analysis_indexes(chat: Chat) -> list[str]:
    """The chat_successful and user_sentiment indexes the chat's analysis puts it in."""
    shard, analysis = keys.shard_of(chat.chat_id), chat.analysis or {}
    found = []
    if isinstance(analysis.get("chat_successful"), bool):
        found.append(keys.chats_by_success(shard, analysis["chat_successful"]))
    if analysis.get("user_sentiment") in SENTIMENTS:
        found.append(keys.chats_by_sentiment(shard, analysis["user_sentiment"]))
    return found


class Chats:
    """Reads and writes chats."""

    def __init__(self, redis: aioredis.Redis, *, ttl_s: int, lock_ttl_ms: int, watchers: Watchers | None = None,
                 ) -> None:
        self._redis = redis
        self.ttl_s = ttl_s
        self._watchers = watchers or Watchers(redis)   # whether to tell the console's live views
        self._locks = Locks(redis, ttl_ms=lock_ttl_ms)
        self._commit = redis.register_script(_COMMIT)
        self._create = redis.register_script(_CREATE)

    async def create(self, chat: Chat, *, events: Sequence[Event] = ()) -> None:
        """Store a new chat (and queue ``events``); an SMS chat also becomes its conversation's ongoing chat."""
        shard = keys.shard_of(chat.chat_id)
        # The listing's indexes (chats/query.py). Each is trimmed to chat_ttl_s by start time here; all but
        # {S}:chats may stop getting chats, so a TTL bounds them too (when it strikes, every member started more
        # than chat_ttl_s ago).
        indexes = listing_indexes(chat)
        chat.touched_ms = chat.start_timestamp
        conv = chat.conversation
        fields = [part for item in chat.to_hash().items() for part in item]
        plan = {"chat": chat.chat_id, "fields": fields, "ttl": self.ttl_s, "start": str(chat.start_timestamp),
                "trim": f"({chat.start_timestamp - self.ttl_s * 1000}", "conv": conv is not None,
                "events": [e.to_json() for e in events], "now": str(now_ms())}
        # One script, not a MULTI of 20-30 commands: the same writes, atomic, for a fraction of the client's CPU.
        await self._create(
            keys=[keys.chat(chat.chat_id), keys.chats_indexed(shard),
                  keys.current_chat(conv) if conv is not None else keys.chat(chat.chat_id),
                  keys.outbox(chat.chat_id), keys.outbox_due(shard), *indexes],
            args=[orjson.dumps(plan)])

    async def get(self, chat_id: str) -> Chat | None:
        data = await self._redis.hgetall(keys.chat(chat_id))
        return Chat.from_hash({str(k): str(v) for k, v in data.items()}) if data else None

    async def ongoing(self, conv: Conversation) -> Chat | None:
        """The conversation's ongoing chat, if any."""
        chat_id = await self._redis.get(keys.current_chat(conv))
        if chat_id is None:
            return None
        chat = await self.get(str(chat_id))
        return chat if chat is not None and chat.chat_status is ChatStatus.ONGOING else None

    async def ongoing_with_history(self, chat_id: str, last: int) -> tuple[Chat | None, list[Message]]:
        """Chat ``chat_id`` if it is ongoing, with its last ``last`` messages, in one round trip."""
        row, raws = await pipelined(self._redis, self.history_reads(chat_id, last))
        return self.ongoing_from(row, raws)

    @staticmethod
    def history_reads(chat_id: str, last: int) -> list[tuple[Any, ...]]:
        """The reads of ``ongoing_with_history``, for a caller's round trip (``storage.pipelining.pipelined``);
        ``ongoing_from`` reads their two replies."""
        return [("HGETALL", keys.chat(chat_id)), ("LRANGE", keys.chat_messages(chat_id), -last, -1)]

    @staticmethod
    def ongoing_from(row: dict[str, str], raws: list[str]) -> tuple[Chat | None, list[Message]]:
        if not row or row.get("chat_status") != ChatStatus.ONGOING.value:
            return None, []
        return Chat.from_hash(row), [Message.from_json(raw) for raw in raws]

    async def update(self, chat: Chat) -> None:
        """Write back what update-chat sets: variables, metadata, the pause, custom attributes, data storage setting;
        and tell the console's live views."""
        fields = chat.to_hash()
        names = ("dynamic_variables", "metadata", "agent_paused", "custom_attributes", "data_storage_setting")
        await self._redis.hset(keys.chat(chat.chat_id),
                               mapping={name: fields[name] for name in names if name in fields})
        # The console's open views of the chat (a pause, say). Its own command: redis-py's cluster pipelines refuse
        # PUBLISH.
        if channel := await self._watchers.channel():
            await self._redis.publish(channel, chat.chat_id)

    async def store_analysis(self, chat: Chat, events: Sequence[Event] = ()) -> None:
        """Write the chat's analysis (or the error that stopped it), its place in the chat_successful and
        user_sentiment indexes (out of those of an earlier analysis), its tokens and cost, and queue ``events``, in
        one transaction."""
        key, shard = keys.chat(chat.chat_id), keys.shard_of(chat.chat_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            fields = chat.turn_fields()
            for name in ("llm_tokens", "cost"):
                if name in fields:
                    pipe.hset(key, name, fields[name])
            if chat.analysis is not None:
                pipe.hset(key, "analysis", orjson.dumps(chat.analysis).decode())
                for index in [keys.chats_by_success(shard, v) for v in (True, False)] + [
                        keys.chats_by_sentiment(shard, v) for v in SENTIMENTS]:
                    pipe.zrem(index, chat.chat_id)
                for index in analysis_indexes(chat):
                    pipe.zadd(index, {chat.chat_id: chat.start_timestamp})
                    pipe.expire(index, self.ttl_s)
            if chat.analysis_error is not None:
                pipe.hset(key, "analysis_error", chat.analysis_error)
            else:
                pipe.hdel(key, "analysis_error")
            for event in events:
                queue(pipe, event, self.ttl_s)
            await pipe.execute()

    async def reject(self, conv: Conversation, messages: list[Message]) -> None:
        """Keep texts the chat_inbound webhook rejected (the newest REJECTED_CAP, for chat_ttl_s)."""
        key = keys.rejected(conv)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *(m.to_json() for m in messages))
            pipe.ltrim(key, -keys.REJECTED_CAP, -1)
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def set_deadline(self, chat_id: str, deadline_ms: int | None) -> None:
        """Arm the chat's silence timer for ``deadline_ms``, or disarm it (None)."""
        timers = keys.timers(keys.shard_of(chat_id))
        if deadline_ms is None:
            await self._redis.zrem(timers, chat_id)
        else:
            await self._redis.zadd(timers, {chat_id: deadline_ms})

    async def deadline(self, chat_id: str) -> int | None:
        """The chat's armed silence deadline, if any."""
        score = await self._redis.zscore(keys.timers(keys.shard_of(chat_id)), chat_id)
        return None if score is None else int(score)

    async def delete(self, chat: Chat) -> None:
        """Remove the chat, its messages, its timer and its place in the indexes."""
        shard = keys.shard_of(chat.chat_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.chat(chat.chat_id), keys.chat_messages(chat.chat_id))
            for index in {*listing_indexes(chat), keys.chats_ongoing(shard)}:
                pipe.zrem(index, chat.chat_id)
            pipe.zrem(keys.timers(shard), chat.chat_id)
            conv = chat.conversation
            if conv is not None:
                pipe.eval(_CLEAR_POINTER, 1, keys.current_chat(conv), chat.chat_id)
            await pipe.execute()

    async def messages(self, chat_id: str, last: int | None = None) -> list[Message]:
        start = -last if last else 0
        raws = await self._redis.lrange(keys.chat_messages(chat_id), start, -1)
        return [Message.from_json(str(raw)) for raw in raws]

    @asynccontextmanager
    async def locked(self, chat_id: str) -> AsyncIterator[None]:
        """Hold an API chat's completion lock for the ``async with`` block; ``Conflict`` when another
        completion keeps it longer than ``locks.WAIT_S``."""
        async with self._locks.held(keys.chat_lock(chat_id),
                                    busy=f"chat {chat_id} is busy with another completion; try again"):
            yield

    async def commit(self, commit: Commit, *, hold: Hold | None = None) -> Release:
        """Write a turn's results atomically (``Commit``). Under a ``hold`` nothing is written unless the lock is
        still the holder's; the answer says whether the lock was released, kept for more work, or lost."""
        conv = hold.conv if hold is not None else commit.conv
        chat, result = commit.chat, commit.result
        if chat is None and conv is None:
            return Release.RELEASED
        now = now_ms()
        # Every key is in one partition: the conversation's, which is also its chats'.
        shard = keys.shard_of(chat.chat_id) if chat is not None else cast(Conversation, conv).shard
        anchor = keys.chat(chat.chat_id) if chat is not None else keys.mailbox(cast(Conversation, conv))
        refresh = chat is not None and now - (chat.touched_ms or 0) > self.ttl_s * 1000 // 24
        ending = chat is not None and result.end is not None
        if chat is not None and result.end is not None:
            chat.chat_status = ChatStatus.ENDED
            chat.end_timestamp = result.end_timestamp
            chat.disconnection_reason = result.end.value
        if refresh and chat is not None:
            chat.touched_ms = now
        plan: dict[str, Any] = {
            "token": hold.token if hold is not None else "",
            "entry": hold.entry_id if hold is not None else "",
            "group": keys.WORKER_GROUP,
            "conv": conv is not None,
            "consumed": result.consumed if conv is not None else 0,
            "now": str(now),
            "ttl": self.ttl_s,
            "cap": keys.CHAT_MESSAGES_CAP,
        }
        if chat is not None:
            plan |= {
                "chat": chat.chat_id,
                "messages": [m.to_json() for m in result.messages],
                "events": [e.to_json() for e in commit.events],
                "refresh": refresh,
                "analyze": commit.analyze,
                "deadline": str(result.deadline_ms) if result.deadline_ms is not None and not ending else "",
                # Messages Twilio refused for now wait in the conversation's outgoing queue, from this same write.
                "waiting": [outgoing_entry(chat.chat_id, m) for m in result.messages
                            if m.status == RETRYING] if conv is not None else [],
                "conv_id": conv.id if conv is not None else "",
                "waiting_ttl": keys.OUTGOING_TTL_S,
                # What tools collected, the agent's state (written whole; turns of a chat never overlap).
                "fields": chat.turn_fields(),
                # A chat that swapped agents is listed under the agent it goes on with (KEYS[17]), not those it
                # left (KEYS[18..]); the start time stays its score.
                "reindex": bool(chat.swaps),
                "start": str(chat.start_timestamp),
                "live": await self._watchers.channel(),   # the console's live views, while open ('' none)
            }
            if ending:
                plan["end"] = {"chat_status": ChatStatus.ENDED.value, "end_timestamp": str(result.end_timestamp),
                               "disconnection_reason": cast(EndReason, result.end).value,
                               # The reason's and the end day's listing indexes, trimmed like the others.
                               "start": chat.start_timestamp, "trim": f"({chat.start_timestamp - self.ttl_s * 1000}"}
        chat_id = chat.chat_id if chat is not None else ""
        outcome = await evalsha(
            self._redis, self._commit,
            keys=[
                keys.lock(conv) if conv is not None else anchor,
                keys.mailbox(conv) if conv is not None else anchor,
                keys.wakeups(shard),
                keys.chat(chat_id) if chat is not None else anchor,
                keys.chat_messages(chat_id) if chat is not None else anchor,
                keys.timers(shard),
                keys.current_chat(conv) if conv is not None else anchor,
                keys.analysis_due(shard),
                keys.outbox(chat_id) if chat is not None else anchor,
                keys.outbox_due(shard),
                keys.outgoing(conv) if conv is not None else anchor,
                keys.outgoing_due(shard),
                keys.chats_ongoing(shard),
                keys.deferred(conv) if conv is not None else anchor,
                keys.chats_by_reason(shard, result.end.value) if ending and result.end is not None else anchor,
                keys.chats_ended_on(shard, keys.end_day(result.end_timestamp or now)) if ending else anchor,
                *_agent_indexes(chat),
            ],
            args=[orjson.dumps(plan)],
        )
        return Release(int(outcome))


def _agent_indexes(chat: Chat | None) -> list[str]:
    """The agent index of the agent a swapped chat goes on with, then those of the agents it left."""
    if chat is None or not chat.swaps:
        return []
    shard = keys.shard_of(chat.chat_id)
    left = {swap.agent_id for swap in chat.swaps} - {chat.agent_id}
    return [keys.chats_by_agent(shard, chat.agent_id), *(keys.chats_by_agent(shard, a) for a in sorted(left))]


@dataclass(slots=True)
class Commit:
    """One turn's write: ``result`` into ``chat`` (None: a turn that opened no chat, which only consumes
    mailbox items of ``conv``), with the ``events`` that report it and, when ``analyze``, the chat's place in
    the post-chat analysis queue."""

    chat: Chat | None
    conv: Conversation | None
    result: TurnResult
    events: Sequence[Event] = ()
    analyze: bool = False


# KEYS: 1 lock, 2 mailbox, 3 wakeups, 4 chat, 5 messages, 6 timers, 7 conversation's chat pointer, 8 analysis due,
# 9 outbox, 10 outbox due, 11 the conversation's outgoing queue, 12 outgoing due, 13 the ongoing chats' index,
# 14 the conversation's deferred-send marker, 15 the end reason's listing index, 16 the end day's, and for a chat
# that swapped agents 17 its agent's index and 18.. the indexes of the agents it left (all in one partition; unused
# ones repeat another key of it).
# ARGV[1]: the plan, JSON: token ('' unfenced), entry (the wake-up's id, '' none), group (the consumer group),
# conv (there is a conversation), consumed (mailbox items the turn handled), now (ms), ttl (s), cap (messages
# kept); with a chat: chat (its id), messages and events (arrays of JSON), refresh (refresh the TTLs), analyze,
# deadline (the silence deadline in ms, '' leave it), waiting (outgoing-queue entries of the messages that wait
# for Twilio), conv_id, waiting_ttl (s), fields (chat fields to set: collected variables, state, a swap's agent),
# reindex (list the chat under KEYS[17], not KEYS[18..]), start (its start time), live (the pub/sub channel told the
# chat id when the turn wrote messages or ended the chat) and, when ending, end (the fields
# that end it, and the chat's start time and trim bound for the indexes 15 and 16).
# Returns a Release: -1 when the lock is not the caller's (nothing written), 0 when the mailbox has more work
# (lock kept), 1 otherwise (a fenced commit has then released the lock and acknowledged the wake-up).
# KEYS: chat, chats_indexed, current chat (the chat's own key when there is no conversation), outbox, outbox due,
# then the listing indexes (the first, {S}:chats, has no TTL).  ARGV: the plan (JSON).  Chats.create's writes.
_CREATE = """
local p = cjson.decode(ARGV[1])
if #p.events > 0 then
  redis.call('RPUSH', KEYS[4], unpack(p.events))
  redis.call('EXPIRE', KEYS[4], p.ttl)
  redis.call('ZADD', KEYS[5], 'NX', p.now, p.chat)
end
redis.call('HSET', KEYS[1], unpack(p.fields))
redis.call('EXPIRE', KEYS[1], p.ttl)
for i = 6, #KEYS do
  redis.call('ZADD', KEYS[i], p.start, p.chat)
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', p.trim)
  if i > 6 then redis.call('EXPIRE', KEYS[i], p.ttl) end
end
-- Chats from this one on are indexed here, so the listing indexes only older ones (a release's).
redis.call('SET', KEYS[2], p.start, 'NX')
redis.call('EXPIRE', KEYS[2], p.ttl)
if p.conv then redis.call('SET', KEYS[3], p.chat, 'EX', p.ttl) end
return 1
"""

_COMMIT = """
local p = cjson.decode(ARGV[1])
if p.token ~= '' and redis.call('GET', KEYS[1]) ~= p.token then return -1 end
if p.chat then
  local chat_id = p.chat
  if #p.messages > 0 then
    local n = redis.call('RPUSH', KEYS[5], unpack(p.messages))
    if n == #p.messages then redis.call('EXPIRE', KEYS[5], p.ttl) end
    if n > p.cap then redis.call('LTRIM', KEYS[5], -p.cap, -1) end
  end
  local fields = {}   -- one HSET for all of them: a turn sets several (tokens, segments, cost...)
  for name, value in pairs(p.fields) do fields[#fields + 1] = name; fields[#fields + 1] = value end
  if #fields > 0 then redis.call('HSET', KEYS[4], unpack(fields)) end
  if p.reindex then
    for i = 18, #KEYS do redis.call('ZREM', KEYS[i], chat_id) end
    redis.call('ZADD', KEYS[17], p.start, chat_id)
    redis.call('EXPIRE', KEYS[17], p.ttl)
  end
  if p.refresh then
    redis.call('EXPIRE', KEYS[4], p.ttl)
    redis.call('EXPIRE', KEYS[5], p.ttl)
    redis.call('HSET', KEYS[4], 'touched_ms', p.now)
  end
  if p['end'] then
    local e = p['end']
    redis.call('HSET', KEYS[4], 'chat_status', e.chat_status, 'end_timestamp', e.end_timestamp,
               'disconnection_reason', e.disconnection_reason)
    redis.call('ZREM', KEYS[6], chat_id)
    redis.call('ZREM', KEYS[13], chat_id)
    for k = 15, 16 do
      redis.call('ZADD', KEYS[k], e.start, chat_id)
      redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', e.trim)
      redis.call('EXPIRE', KEYS[k], p.ttl)
    end
    if p.conv and redis.call('GET', KEYS[7]) == chat_id then redis.call('DEL', KEYS[7]) end
  else
    if p.deadline ~= '' then redis.call('ZADD', KEYS[6], p.deadline, chat_id) end
    if p.conv and p.refresh then redis.call('EXPIRE', KEYS[7], p.ttl) end
  end
  if #p.events > 0 then
    redis.call('RPUSH', KEYS[9], unpack(p.events))
    redis.call('EXPIRE', KEYS[9], p.ttl)
    redis.call('ZADD', KEYS[10], 'NX', p.now, chat_id)
  end
  if p.analyze then redis.call('ZADD', KEYS[8], p.now, chat_id) end
  if p.live ~= '' and (#p.messages > 0 or p['end']) then redis.call('PUBLISH', p.live, chat_id) end
  if #p.waiting > 0 then
    redis.call('RPUSH', KEYS[11], unpack(p.waiting))
    redis.call('EXPIRE', KEYS[11], p.waiting_ttl)
    redis.call('ZADD', KEYS[12], 'NX', p.now, p.conv_id)
    redis.call('DEL', KEYS[14])
  end
end
if not p.conv then return 1 end
-- Does the mailbox hold items after the consumed ones?  Trim those, or drop the emptied mailbox (with the lock).
local more = redis.call('LINDEX', KEYS[2], p.consumed)
if more and p.consumed > 0 then redis.call('LTRIM', KEYS[2], p.consumed, -1) end
if p.token == '' then
  if not more then redis.call('DEL', KEYS[2]) end
  return 1
end
if more then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
if p.entry ~= '' then redis.call('XACK', KEYS[3], p.group, p.entry) end
return 1
"""

_CLEAR_POINTER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
