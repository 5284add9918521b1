"""A chat, its messages and a turn's results: the shapes every part of Parley passes around.

A chat is Retell's chat object: its own fields (``Chat``, stored as a Redis hash) and its messages
(``Message``, Retell's ``message_with_tool_calls`` entries, stored as a capped list). ``TurnResult`` is
what one turn writes back (``chats.store.Chats.commit``).
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any, cast

import orjson

from service.address import SMS, Conversation, address
from service.retell.models import ChannelName, ChatAnalysis, ChatCost, ChatResponse


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
    STATE_TRANSITION = "state_transition"   # a multi-state agent moved (former_state_name -> new_state_name)
    NODE_TRANSITION = "node_transition"     # a conversation flow moved (former_node_id -> new_node_id)


class EndReason(StrEnum):
    """Why a chat ended (the chat object's ``disconnection_reason``): Retell's value where its enum has one
    (``agent_hangup``, ``inactivity``; a STOP is ``user_requested_dnc``; the end-chat API ``manual_stopped``),
    else Parley's own (the README lists them)."""

    AGENT_ENDED = "agent_hangup"
    USER_OPTED_OUT = "user_requested_dnc"
    INACTIVITY = "inactivity"
    API = "manual_stopped"
    REPLACED = "replaced_by_new_chat"
    SEND_FAILED = "sms_send_failed"


# Turns of knowledge-base retrieval a chat keeps (Chat.knowledge_retrieved): a few kB of the chat's hash.
KNOWLEDGE_RETRIEVED_CAP = 20

# What earlier releases stored, read as today's values.
_LEGACY_REASONS = {"user_opted_out": EndReason.USER_OPTED_OUT.value, "api_ended": EndReason.API.value}


def end_reason(stored: str | None) -> str | None:
    """A stored ``disconnection_reason`` as the chat object gives it (earlier releases' values mapped)."""
    return _LEGACY_REASONS.get(stored, stored) if stored is not None else None


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
    type: str | None = None            # a tool_call_invocation's tool type (Retell's: custom, end_call, send_sms...)
    former_state_name: str | None = None
    new_state_name: str | None = None
    former_node_id: str | None = None
    former_node_name: str | None = None
    new_node_id: str | None = None
    new_node_name: str | None = None
    transition_type: str | None = None   # a node transition's: normal, global or global_go_back

    def to_json(self) -> str:
        return orjson.dumps(self.to_retell()).decode()

    def to_retell(self) -> dict[str, Any]:
        out = {name: value for name in _MESSAGE_FIELDS if (value := getattr(self, name)) is not None}
        if self.media:   # Retell's MMS shape beside Parley's media (which keeps the content type)
            out["multimedia"] = [{"url": m["url"], "summary": m.get("content_type", "attachment")}
                                 for m in self.media]
        return out

    def billed_segments(self) -> int:
        """The SMS segments this message counts in the chat's cost (a send that failed costs nothing)."""
        return (self.segments or 0) if self.status != "failed" else 0

    @classmethod
    def from_json(cls, raw: str) -> Message:
        data = orjson.loads(raw)
        data["role"] = Role(data["role"])
        data.pop("multimedia", None)   # derived from media (to_retell)
        return cls(**data)


_MESSAGE_FIELDS = tuple(f.name for f in fields(Message))


@dataclass(frozen=True, slots=True)
class Swap:
    """An agent the chat left by an ``agent_swap`` tool, and the swap's ``post_call_analysis_setting``."""

    agent_id: str
    version: int
    llm_version: int | None
    post_call_analysis_setting: str
    timestamp: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Swap:
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
    llm_version: int | None = None        # the engine version (Retell LLM or conversation flow) the chat runs
    analysis: dict[str, Any] | None = None   # chat_analysis, once the post-chat analysis ran
    analysis_error: str | None = None        # why the last analysis failed
    inbound_webhook_error: str | None = None # why the chat_inbound webhook was not followed
    agent_paused: bool = False               # a human has taken over: texts are stored, the LLM is not called
    touched_ms: int | None = None            # when the chat's TTLs were last refreshed
    dynamic_variables: dict[str, str] = field(default_factory=dict)
    collected_variables: dict[str, str] = field(default_factory=dict)   # set by tools during the chat
    current_state: str | None = None       # a multi-state agent's state (None: its starting state)
    previous_state: str | None = None
    flow_state: dict[str, Any] | None = None   # a conversation flow's place (service.agent.flow; None: its start)
    metadata: dict[str, Any] = field(default_factory=dict)
    channel: str = SMS                       # an SMS chat's channel: "sms" or "whatsapp"
    llm_tokens: dict[str, list[int]] = field(default_factory=dict)   # model -> [prompt, completion] tokens
    sms_segments: int = 0                    # segments of the chat's messages, as billed (Message.billed_segments)
    cost: dict[str, Any] | None = None       # chat_cost, estimated at each commit (chats/cost.py)
    agent_override: dict[str, Any] | None = None   # the chat_inbound webhook's agent_override, for this chat
    custom_attributes: dict[str, Any] = field(default_factory=dict)   # set by update-chat, answered and listed by
    data_storage_setting: str | None = None  # set by update-chat; listed by, not applied (Parley keeps everything)
    # Each turn's knowledge-base retrieval (service.agent.retrieval), the last KNOWLEDGE_RETRIEVED_CAP turns
    knowledge_retrieved: list[dict[str, Any]] = field(default_factory=list)

    @property
    def user_number(self) -> str | None:
        """The user's address (``whatsapp:`` + E.164 off SMS), as the listing's user_number filter reads it."""
        conv = self.conversation
        return address(conv.channel, conv.user_number) if conv is not None else None

    @property
    def agent_number(self) -> str | None:
        conv = self.conversation
        return address(conv.channel, conv.agent_number) if conv is not None else None

    def retrieved(self, entry: dict[str, Any]) -> None:
        """Record a turn's knowledge-base retrieval (the oldest dropped past ``KNOWLEDGE_RETRIEVED_CAP``)."""
        self.knowledge_retrieved = [*self.knowledge_retrieved, entry][-KNOWLEDGE_RETRIEVED_CAP:]

    def add_tokens(self, model: str, prompt: int, completion: int) -> None:
        """Count an LLM call's tokens against the chat (its cost)."""
        counts = self.llm_tokens.setdefault(model, [0, 0])
        counts[0] += prompt
        counts[1] += completion
    swaps: list[Swap] = field(default_factory=list)   # the agents an agent_swap left, oldest first

    @property
    def original_agent(self) -> tuple[str, int]:
        """The agent (and version) the chat started with, before any swap."""
        first = self.swaps[0] if self.swaps else None
        return (first.agent_id, first.version) if first else (self.agent_id, self.version)

    def swap_to(self, agent_id: str, version: int, llm_version: int, setting: str, now_ms: int) -> None:
        """Go on with another agent version: its LLM version, its starting state."""
        self.swaps.append(Swap(self.agent_id, self.version, self.llm_version, setting, now_ms))
        self.agent_id, self.version, self.llm_version = agent_id, version, llm_version
        self.current_state = self.previous_state = None
        self.flow_state = None

    @property
    def conversation(self) -> Conversation | None:
        """The conversation of an SMS chat (its channel, the agent's number and the user's)."""
        if self.chat_type is not ChatType.SMS or not self.from_number or not self.to_number:
            return None
        if self.direction is Direction.INBOUND:
            return Conversation(self.to_number, self.from_number, self.channel)
        return Conversation(self.from_number, self.to_number, self.channel)

    def to_hash(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name in _CHAT_FIELDS:   # not ``asdict``, which deep-copies every value first (orjson reads dataclasses)
            value = getattr(self, name)
            if value is None or (name in ("swaps", "knowledge_retrieved") and not value):
                continue
            out[name] = orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)
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
            collected_variables=orjson.loads(data.get("collected_variables", "{}")),
            current_state=data.get("current_state") or None,   # "": cleared by a swap
            previous_state=data.get("previous_state") or None,
            flow_state=orjson.loads(data["flow_state"]) if data.get("flow_state") else None,   # "": cleared
            metadata=orjson.loads(data.get("metadata", "{}")),
            channel=data.get("channel", SMS),
            llm_tokens=orjson.loads(data.get("llm_tokens", "{}")),
            sms_segments=int(data.get("sms_segments", 0)),
            cost=orjson.loads(data["cost"]) if "cost" in data else None,
            agent_override=orjson.loads(data["agent_override"]) if "agent_override" in data else None,
            custom_attributes=orjson.loads(data.get("custom_attributes", "{}")),
            data_storage_setting=data.get("data_storage_setting"),
            swaps=[Swap.from_dict(s) for s in orjson.loads(data.get("swaps", "[]"))],
            knowledge_retrieved=orjson.loads(data.get("knowledge_retrieved", "[]")),
        )

    def turn_fields(self) -> dict[str, str]:
        """The fields a turn may change besides its messages and ending, as stored (``Chats.commit``)."""
        out = {"collected_variables": orjson.dumps(self.collected_variables).decode()} \
            if self.collected_variables else {}
        if self.current_state is not None:
            out["current_state"] = self.current_state
        if self.previous_state is not None:
            out["previous_state"] = self.previous_state
        if self.flow_state is not None:
            out["flow_state"] = orjson.dumps(self.flow_state).decode()
        if self.llm_tokens:
            out["llm_tokens"] = orjson.dumps(self.llm_tokens).decode()
        if self.sms_segments:
            out["sms_segments"] = str(self.sms_segments)
        if self.cost is not None:
            out["cost"] = orjson.dumps(self.cost).decode()
        if self.knowledge_retrieved:
            out["knowledge_retrieved"] = orjson.dumps(self.knowledge_retrieved).decode()
        if self.swaps:   # the agent the chat goes on with; a state of the agent it left is cleared
            out |= {"agent_id": self.agent_id, "version": str(self.version),
                    "swaps": orjson.dumps([asdict(s) for s in self.swaps]).decode(),
                    "current_state": self.current_state or "", "previous_state": self.previous_state or "",
                    "flow_state": orjson.dumps(self.flow_state).decode() if self.flow_state is not None else ""}
            if self.llm_version is not None:
                out["llm_version"] = str(self.llm_version)
        return out

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
            from_number=address(self.channel, self.from_number) if self.from_number else None,
            to_number=address(self.channel, self.to_number) if self.to_number else None,
            direction=self.direction.value if self.direction else None,
            start_timestamp=self.start_timestamp,
            end_timestamp=self.end_timestamp,
            disconnection_reason=end_reason(self.disconnection_reason),
            chat_cost=ChatCost.model_validate(self.cost) if self.cost is not None else None,
            transcript="".join(line + "\n" for line in lines),
            message_with_tool_calls=[m.to_retell() for m in messages],
            retell_llm_dynamic_variables=self.dynamic_variables,
            collected_dynamic_variables=self.collected_variables,
            current_node=(self.flow_state or {}).get("node_name"),
            metadata=self.metadata,
            custom_attributes=self.custom_attributes or None,
            data_storage_setting=self.data_storage_setting,
            chat_analysis=ChatAnalysis.model_validate(self.analysis) if self.analysis else None,
            analysis_error=self.analysis_error,
            inbound_webhook_error=self.inbound_webhook_error,
            agent_paused=self.agent_paused if self.chat_type is ChatType.SMS else None,
            channel=cast(ChannelName, self.channel) if self.chat_type is ChatType.SMS else None,
            knowledge_base_retrieved_contents=self.knowledge_retrieved or None,
        )


@dataclass(slots=True)
class TurnResult:
    """What a turn writes back in one transaction."""

    messages: list[Message] = field(default_factory=list)
    consumed: int = 0                     # mailbox items handled, trimmed from its head
    deadline_ms: int | None = None        # the chat's next silence deadline (None: leave the timer as is)
    end: EndReason | None = None          # end the chat with this reason
    end_timestamp: int | None = None




_CHAT_FIELDS = tuple(f.name for f in fields(Chat))
