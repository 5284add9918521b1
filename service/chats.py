"""Chats in Redis, in Retell's shape: the chat's fields in a hash, its messages in a capped list.

A turn's results (new messages, the consumed mailbox items, the silence deadline, the end of the chat)
are committed in one MULTI, so a crash leaves either all of it or none of it.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from . import keys
from .clock import now_ms
from .events import Event, queue
from .keys import Conversation
from .retell import ChatAnalysis, ChatResponse


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
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, raw: str) -> Message:
        data = orjson.loads(raw)
        data["role"] = Role(data["role"])
        return cls(**data)


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

    async def create(self, chat: Chat, *, events: Sequence[Event] = ()) -> None:
        """Store a new chat (and queue ``events``); an SMS chat also becomes its conversation's ongoing chat."""
        async with self._redis.pipeline(transaction=True) as pipe:
            for event in events:
                queue(pipe, event, self.ttl_s)
            pipe.hset(keys.chat(chat.chat_id), mapping=cast(Any, chat.to_hash()))
            pipe.expire(keys.chat(chat.chat_id), self.ttl_s)
            pipe.zadd(keys.CHATS, {chat.chat_id: chat.start_timestamp})
            pipe.zremrangebyscore(keys.CHATS, "-inf", f"({chat.start_timestamp - self.ttl_s * 1000}")
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
        if deadline_ms is None:
            await self._redis.zrem(keys.INACTIVITY_TIMERS, chat_id)
        else:
            await self._redis.zadd(keys.INACTIVITY_TIMERS, {chat_id: deadline_ms})

    async def delete(self, chat: Chat) -> None:
        """Remove the chat, its messages, its timer and its place in the index."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.chat(chat.chat_id), keys.chat_messages(chat.chat_id))
            pipe.zrem(keys.CHATS, chat.chat_id)
            pipe.zrem(keys.INACTIVITY_TIMERS, chat.chat_id)
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
        analyze: bool = False,
    ) -> None:
        """Write a turn's results atomically: messages, mailbox trim, silence timer, end of chat, the events
        that report them, and (``analyze``) the chat's place in the analysis queue."""
        async with self._redis.pipeline(transaction=True) as pipe:
            for event in events:
                queue(pipe, event, self.ttl_s)
            if analyze and chat is not None:
                pipe.zadd(keys.ANALYSIS_DUE, {chat.chat_id: now_ms()})
            if chat is not None:
                self._queue_chat_writes(pipe, chat, conv, result)
            if conv is not None and result.consumed:
                pipe.ltrim(keys.mailbox(conv), result.consumed, -1)
            await pipe.execute()

    def _queue_chat_writes(self, pipe: Any, chat: Chat, conv: Conversation | None, result: TurnResult) -> None:
        chat_key, messages_key = keys.chat(chat.chat_id), keys.chat_messages(chat.chat_id)
        if result.messages:
            pipe.rpush(messages_key, *(m.to_json() for m in result.messages))
            pipe.ltrim(messages_key, -keys.CHAT_MESSAGES_CAP, -1)
            for sid in (m.message_sid for m in result.messages if m.message_sid and m.role is Role.AGENT):
                pipe.set(keys.sms(sid), chat.chat_id, ex=self.ttl_s)   # status callbacks find the chat
        pipe.expire(messages_key, self.ttl_s)
        pipe.expire(chat_key, self.ttl_s)
        if result.end is not None:
            chat.chat_status = ChatStatus.ENDED
            chat.end_timestamp = result.end_timestamp
            chat.disconnection_reason = result.end.value
            pipe.hset(chat_key, mapping={"chat_status": ChatStatus.ENDED.value,
                                         "end_timestamp": str(result.end_timestamp),
                                         "disconnection_reason": result.end.value})
            pipe.zrem(keys.INACTIVITY_TIMERS, chat.chat_id)
            if conv is not None:
                # Only clear the pointer if it still names this chat (compare-and-delete below).
                pipe.eval(_CLEAR_POINTER, 1, keys.current_chat(conv), chat.chat_id)
        elif result.deadline_ms is not None:
            pipe.zadd(keys.INACTIVITY_TIMERS, {chat.chat_id: result.deadline_ms})
        if conv is not None and result.end is None:
            pipe.expire(keys.current_chat(conv), self.ttl_s)


_CLEAR_POINTER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
