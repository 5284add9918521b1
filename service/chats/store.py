"""Chats in Redis, in Retell's shape: the chat's fields in a hash, its messages in a capped list.

A turn's results (new messages, the consumed mailbox items, the silence deadline, the end of the chat,
the events that report them) are committed by one script, so a crash leaves either all of it or none of it.
A worker's commit is fenced by its conversation lock and, when it empties the mailbox, also releases the
lock and acknowledges the wake-up (``Lease``). All the keys it touches are in the chat's partition, which
is its conversation's (``keys.new_chat_id``), so it runs on Redis Cluster unchanged.

TTLs: a chat's keys live ``chat_ttl_s`` after its last activity, give or take 1/24 of it: a commit refreshes
them only when the last refresh (``touched_ms``) is older than that, which keeps EXPIREs off most turns.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from service.clock import now_ms
from service.conversations.queue import Lease, Release
from service.retell.models import ChatAnalysis, ChatResponse
from service.storage import keys
from service.storage.keys import Conversation
from service.webhooks.events import Event, queue


class ChatStatus(StrEnum):
    ONGOING = "ongoing"
    ENDED = "ended"
    ERROR = "error"


class ChatType(StrEnum):
    API = "api_chat"
    SMS = "sms_chat"


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class Role(StrEnum):
    AGENT = "agent"
    USER = "user"
    TOOL_CALL_INVOCATION = "tool_call_invocation"
    TOOL_CALL_RESULT = "tool_call_result"
    INJECTED = "injected"      # context given to the agent, said by nobody (a voice call's transcript)


class EndReason(StrEnum):
    """Why a chat ended (the chat object's ``disconnection_reason``)."""

    AGENT_ENDED = "agent_hangup"
    USER_OPTED_OUT = "user_opted_out"
    INACTIVITY = "inactivity"
    API = "api_ended"
    REPLACED = "replaced_by_new_chat"
    SEND_FAILED = "sms_send_failed"


def new_id(prefix: str = "") -> str:
    return prefix + secrets.token_hex(16)


@dataclass(slots=True)
class Message:
    """One entry of ``message_with_tool_calls``; SMS messages also carry Twilio's SID and their measure."""

    role: Role
    content: str = ""
    message_id: str = field(default_factory=lambda: new_id("msg_"))
    created_timestamp: int = 0
    tool_call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    successful: bool | None = None
    message_sid: str | None = None
    encoding: str | None = None
    segments: int | None = None
    status: str | None = None
    error_code: int | None = None
    error: str | None = None           # why a send failed, in words
    sender: str | None = None          # "human" when a person wrote an agent message (takeover)
    media: list[dict[str, str]] | None = None

    def to_json(self) -> str:
        return orjson.dumps(self.to_retell()).decode()

    def to_retell(self) -> dict[str, Any]:
        return {name: value for name in _MESSAGE_FIELDS if (value := getattr(self, name)) is not None}

    @classmethod
    def from_json(cls, raw: str) -> Message:
        data = orjson.loads(raw)
        data["role"] = Role(data["role"])
        return cls(**data)


_MESSAGE_FIELDS = tuple(f.name for f in fields(Message))


@dataclass(slots=True)
class Chat:
    """A chat's own fields (its messages live in a separate list)."""

    chat_id: str
    agent_id: str
    version: int
    chat_type: ChatType
    start_timestamp: int
    chat_status: ChatStatus = ChatStatus.ONGOING
    from_number: str | None = None
    to_number: str | None = None
    direction: Direction | None = None
    end_timestamp: int | None = None
    disconnection_reason: str | None = None
    llm_version: int | None = None        # the Retell LLM version the chat started with
    analysis: dict[str, Any] | None = None   # chat_analysis, once the post-chat analysis ran
    analysis_error: str | None = None        # why the last analysis failed
    inbound_webhook_error: str | None = None # why the chat_inbound webhook was not followed
    agent_paused: bool = False               # a human has taken over: texts are stored, the LLM is not called
    touched_ms: int | None = None            # when the chat's TTLs were last refreshed
    dynamic_variables: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def conversation(self) -> Conversation | None:
        """The (agent number, user number) pair of an SMS chat."""
        if self.chat_type is not ChatType.SMS or not self.from_number or not self.to_number:
            return None
        if self.direction is Direction.INBOUND:
            return Conversation(agent_number=self.to_number, user_number=self.from_number)
        return Conversation(agent_number=self.from_number, user_number=self.to_number)

    def to_hash(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in asdict(self).items():
            if value is None:
                continue
            out[name] = orjson.dumps(value).decode() if isinstance(value, dict) else str(value)
        if self.analysis is None:
            out.pop("analysis", None)
        return out

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> Chat:
        def opt_int(name: str) -> int | None:
            return int(data[name]) if name in data else None

        return cls(
            chat_id=data["chat_id"],
            agent_id=data["agent_id"],
            version=int(data["version"]),
            chat_type=ChatType(data["chat_type"]),
            start_timestamp=int(data["start_timestamp"]),
            chat_status=ChatStatus(data["chat_status"]),
            from_number=data.get("from_number"),
            to_number=data.get("to_number"),
            direction=Direction(data["direction"]) if "direction" in data else None,
            end_timestamp=opt_int("end_timestamp"),
            disconnection_reason=data.get("disconnection_reason"),
            llm_version=opt_int("llm_version"),
            analysis=orjson.loads(data["analysis"]) if "analysis" in data else None,
            analysis_error=data.get("analysis_error"),
            inbound_webhook_error=data.get("inbound_webhook_error"),
            agent_paused=data.get("agent_paused") == "True",
            touched_ms=opt_int("touched_ms"),
            dynamic_variables=orjson.loads(data.get("dynamic_variables", "{}")),
            metadata=orjson.loads(data.get("metadata", "{}")),
        )

    def to_response(self, messages: list[Message]) -> ChatResponse:
        """Retell's chat object, with Parley's additive fields."""
        lines = [f"{'Agent' if m.role is Role.AGENT else 'User'}: {m.content}"
                 for m in messages if m.role in (Role.AGENT, Role.USER)]
        return ChatResponse(
            chat_id=self.chat_id,
            agent_id=self.agent_id,
            version=self.version,
            chat_status=self.chat_status.value,
            chat_type=self.chat_type.value,
            from_number=self.from_number,
            to_number=self.to_number,
            direction=self.direction.value if self.direction else None,
            start_timestamp=self.start_timestamp,
            end_timestamp=self.end_timestamp,
            disconnection_reason=self.disconnection_reason,
            transcript="".join(line + "\n" for line in lines),
            message_with_tool_calls=[m.to_retell() for m in messages],
            retell_llm_dynamic_variables=self.dynamic_variables,
            metadata=self.metadata,
            chat_analysis=ChatAnalysis.model_validate(self.analysis) if self.analysis else None,
            analysis_error=self.analysis_error,
            inbound_webhook_error=self.inbound_webhook_error,
            agent_paused=self.agent_paused if self.chat_type is ChatType.SMS else None,
        )


@dataclass(slots=True)
class TurnResult:
    """What a turn writes back in one transaction."""

    messages: list[Message] = field(default_factory=list)
    consumed: int = 0                     # mailbox items handled, trimmed from its head
    deadline_ms: int | None = None        # the chat's next silence deadline (None: leave the timer as is)
    end: EndReason | None = None          # end the chat with this reason
    end_timestamp: int | None = None


class Chats:
    """Reads and writes chats."""

    def __init__(self, redis: aioredis.Redis, *, ttl_s: int) -> None:
        self._redis = redis
        self.ttl_s = ttl_s
        self._commit = redis.register_script(_COMMIT)

    async def create(self, chat: Chat, *, events: Sequence[Event] = ()) -> None:
        """Store a new chat (and queue ``events``); an SMS chat also becomes its conversation's ongoing chat."""
        index = keys.chats(keys.shard_of(chat.chat_id))
        chat.touched_ms = chat.start_timestamp
        async with self._redis.pipeline(transaction=True) as pipe:
            for event in events:
                queue(pipe, event, self.ttl_s)
            pipe.hset(keys.chat(chat.chat_id), mapping=cast(Any, chat.to_hash()))
            pipe.expire(keys.chat(chat.chat_id), self.ttl_s)
            pipe.zadd(index, {chat.chat_id: chat.start_timestamp})
            pipe.zremrangebyscore(index, "-inf", f"({chat.start_timestamp - self.ttl_s * 1000}")
            conv = chat.conversation
            if conv is not None:
                pipe.set(keys.current_chat(conv), chat.chat_id, ex=self.ttl_s)
            await pipe.execute()

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
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.chat(chat_id))
            pipe.lrange(keys.chat_messages(chat_id), -last, -1)
            row, raws = await pipe.execute()
        if not row or row.get("chat_status") != ChatStatus.ONGOING.value:
            return None, []
        return Chat.from_hash(row), [Message.from_json(raw) for raw in raws]

    async def update(self, chat: Chat) -> None:
        """Write the chat's variables and metadata back."""
        fields = chat.to_hash()
        await self._redis.hset(keys.chat(chat.chat_id), mapping={
            "dynamic_variables": fields["dynamic_variables"], "metadata": fields["metadata"],
            "agent_paused": fields["agent_paused"]})

    async def store_analysis(self, chat: Chat, events: Sequence[Event] = ()) -> None:
        """Write the chat's analysis (or the error that stopped it) and queue ``events``, in one transaction."""
        key = keys.chat(chat.chat_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            if chat.analysis is not None:
                pipe.hset(key, "analysis", orjson.dumps(chat.analysis).decode())
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
        """Remove the chat, its messages, its timer and its place in the index."""
        shard = keys.shard_of(chat.chat_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.chat(chat.chat_id), keys.chat_messages(chat.chat_id))
            pipe.zrem(keys.chats(shard), chat.chat_id)
            pipe.zrem(keys.timers(shard), chat.chat_id)
            conv = chat.conversation
            if conv is not None:
                pipe.eval(_CLEAR_POINTER, 1, keys.current_chat(conv), chat.chat_id)
            await pipe.execute()

    async def messages(self, chat_id: str, last: int | None = None) -> list[Message]:
        start = -last if last else 0
        raws = await self._redis.lrange(keys.chat_messages(chat_id), start, -1)
        return [Message.from_json(str(raw)) for raw in raws]

    async def commit(
        self, chat: Chat | None, conv: Conversation | None, result: TurnResult, *, events: Sequence[Event] = (),
        analyze: bool = False, lease: Lease | None = None,
    ) -> None:
        """Write a turn's results atomically: messages, mailbox trim, silence timer, end of chat, the events
        that report them, and (``analyze``) the chat's place in the analysis queue. Under a ``lease`` nothing
        is written unless the lock is still held, and ``lease.outcome`` says whether the lock was released."""
        if lease is not None:
            conv = lease.conv
        if chat is None and conv is None:
            return
        now = now_ms()
        # Every key is in one partition: the conversation's, which is also its chats'.
        shard = keys.shard_of(chat.chat_id) if chat is not None else cast(Conversation, conv).shard
        anchor = keys.chat(chat.chat_id) if chat is not None else keys.mailbox(cast(Conversation, conv))
        chat_id = chat.chat_id if chat is not None else ""
        refresh = chat is not None and now - (chat.touched_ms or 0) > self.ttl_s * 1000 // 24
        end = ""
        if chat is not None and result.end is not None:
            chat.chat_status = ChatStatus.ENDED
            chat.end_timestamp = result.end_timestamp
            chat.disconnection_reason = result.end.value
            end = orjson.dumps({"chat_status": ChatStatus.ENDED.value, "end_timestamp": str(result.end_timestamp),
                                "disconnection_reason": result.end.value}).decode()
        if refresh and chat is not None:
            chat.touched_ms = now
        outcome = await self._commit(
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
            ],
            args=[
                lease.token if lease is not None else "",
                lease.entry_id if lease is not None else "",
                result.consumed if conv is not None else 0,
                chat_id,
                orjson.dumps([m.to_json() for m in result.messages]).decode() if chat is not None else "[]",
                self.ttl_s,
                1 if refresh else 0,
                end,
                result.deadline_ms if result.deadline_ms is not None and not end else "",
                orjson.dumps([e.to_json() for e in events]).decode() if chat is not None else "[]",
                1 if analyze and chat is not None else 0,
                now,
                keys.CHAT_MESSAGES_CAP,
                1 if conv is not None else 0,
                keys.WORKER_GROUP,
            ],
        )
        if lease is not None:
            lease.outcome = Release(int(outcome))


# KEYS: 1 lock, 2 mailbox, 3 wakeups, 4 chat, 5 messages, 6 timers, 7 conversation's chat pointer, 8 analysis due,
# 9 outbox, 10 outbox due (all in one partition; unused ones repeat another key of it).
# ARGV: 1 lock token ('' unfenced), 2 wake-up entry id, 3 mailbox items consumed, 4 chat id ('' none),
# 5 JSON array of message JSON, 6 ttl s, 7 refresh TTLs (1/0), 8 end fields JSON ('' not ending), 9 silence
# deadline ms ('' leave it), 10 JSON array of event JSON, 11 queue for analysis (1/0), 12 now ms,
# 13 messages cap, 14 has a conversation (1/0), 15 consumer group.
# Returns -1 when the lock is not the caller's (nothing written), 0 when the mailbox has more work (lock kept),
# 1 otherwise (a fenced commit has then released the lock and acknowledged the wake-up).
_COMMIT = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local chat_id = ARGV[4]
if chat_id ~= '' then
  local messages = cjson.decode(ARGV[5])
  if #messages > 0 then
    local n = redis.call('RPUSH', KEYS[5], unpack(messages))
    if n == #messages then redis.call('EXPIRE', KEYS[5], ARGV[6]) end
    if n > tonumber(ARGV[13]) then redis.call('LTRIM', KEYS[5], -tonumber(ARGV[13]), -1) end
  end
  if ARGV[7] == '1' then
    redis.call('EXPIRE', KEYS[4], ARGV[6])
    redis.call('EXPIRE', KEYS[5], ARGV[6])
    redis.call('HSET', KEYS[4], 'touched_ms', ARGV[12])
  end
  if ARGV[8] ~= '' then
    local fields = cjson.decode(ARGV[8])
    redis.call('HSET', KEYS[4], 'chat_status', fields['chat_status'], 'end_timestamp', fields['end_timestamp'],
               'disconnection_reason', fields['disconnection_reason'])
    redis.call('ZREM', KEYS[6], chat_id)
    if ARGV[14] == '1' and redis.call('GET', KEYS[7]) == chat_id then redis.call('DEL', KEYS[7]) end
  else
    if ARGV[9] ~= '' then redis.call('ZADD', KEYS[6], ARGV[9], chat_id) end
    if ARGV[14] == '1' and ARGV[7] == '1' then redis.call('EXPIRE', KEYS[7], ARGV[6]) end
  end
  local events = cjson.decode(ARGV[10])
  if #events > 0 then
    redis.call('RPUSH', KEYS[9], unpack(events))
    redis.call('EXPIRE', KEYS[9], ARGV[6])
    redis.call('ZADD', KEYS[10], 'NX', ARGV[12], chat_id)
  end
  if ARGV[11] == '1' then redis.call('ZADD', KEYS[8], ARGV[12], chat_id) end
end
if ARGV[14] == '0' then return 1 end
-- Does the mailbox hold items after the consumed ones?  Trim those, or drop the emptied mailbox (with the lock).
local more = redis.call('LINDEX', KEYS[2], ARGV[3])
if more and tonumber(ARGV[3]) > 0 then redis.call('LTRIM', KEYS[2], ARGV[3], -1) end
if ARGV[1] == '' then
  if not more then redis.call('DEL', KEYS[2]) end
  return 1
end
if more then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
if ARGV[2] ~= '' then redis.call('XACK', KEYS[3], ARGV[15], ARGV[2]) end
return 1
"""

_CLEAR_POINTER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
