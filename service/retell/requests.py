"""Retell's request and list bodies for the REST API (pydantic), validated by the handlers and documented in
``/openapi.json``. Unknown fields are refused with a 422 that names them, except on objects Retell itself
extends often (agents, LLMs, numbers), whose models live in ``retell.models``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.retell.flows import ConversationFlow, ConversationFlowComponent
from service.retell.models import (
    E164,
    OBJECT_ID_PATTERN,
    Address,
    AgentVersion,
    ChatResponse,
    PhoneNumber,
    RetellLLM,
    SmsContent,
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateChatRequest(_Body):
    agent_id: str = Field(min_length=1)
    agent_version: AgentVersion | None = Field(default=None)
    metadata: dict[str, Any] = Field(default_factory=dict)
    retell_llm_dynamic_variables: dict[str, str] = Field(default_factory=dict)


class CreateSmsChatRequest(_Body):
    from_number: Address
    to_number: Address
    override_agent_id: str | None = Field(default=None, min_length=1)
    override_agent_version: AgentVersion | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    retell_llm_dynamic_variables: dict[str, str] = Field(default_factory=dict)
    honor_internal_dnc: bool | None = Field(default=None, description=(
        "Retell's. Parley always refuses a number that opted out (STOP) of the sending number; false is "
        "answered with an X-Parley-Unsupported header, not obeyed"))


class CreateChatCompletionRequest(_Body):
    chat_id: str = Field(min_length=1)
    content: str = Field(min_length=1, max_length=16_000)


class ChatCompletionResponse(BaseModel):
    """The messages the agent produced for this completion (tool calls included), not the user's input."""

    messages: list[dict[str, Any]]


class UpdateChatRequest(_Body):
    metadata: dict[str, Any] | None = None
    override_dynamic_variables: dict[str, str | None] | None = Field(
        default=None, description="Merged into the chat's variables; a null value removes that variable.")
    data_storage_setting: Literal["everything", "everything_except_pii", "basic_attributes_only"] | None = None
    custom_attributes: dict[str, str | int | float | bool] | None = None
    agent_paused: bool | None = Field(default=None, description="Parley's: true hands the chat to a human")


class EnumFilter(_Body):
    type: Literal["enum"] = "enum"
    op: Literal["in"] = "in"
    value: list[str]


class StringFilter(_Body):
    type: Literal["string"] = "string"
    op: Literal["eq", "ne", "sw", "ew", "co"]
    value: str


class NumberFilter(_Body):
    type: Literal["number"] = "number"
    op: Literal["eq", "ne", "gt", "ge", "lt", "le"]
    value: float


class RangeFilter(_Body):
    type: Literal["range"] = "range"
    op: Literal["bt"] = "bt"
    value: Annotated[list[float], Field(min_length=2, max_length=2)]


class BooleanFilter(_Body):
    type: Literal["boolean"] = "boolean"
    op: Literal["eq"] = "eq"
    value: bool


class NumberStringFilter(StringFilter):
    """A phone-number filter (``user_number``, ``agent_number``): ``eq`` is served from an index, ``ne`` is checked
    per chat; ``sw``, ``ew`` and ``co`` would need every chat read, so they are refused."""

    @model_validator(mode="after")
    def _indexed_ops(self) -> NumberStringFilter:
        if self.op not in ("eq", "ne"):
            raise ValueError(f"op {self.op!r} is not served: Parley lists by a number from an index, so only eq "
                             f"and ne are (the number in full, E.164 or whatsapp:+E.164)")
        return self


class PresentFilter(_Body):
    type: Literal["present"] = "present"
    op: Literal["pr", "np"]


class _Keyed(BaseModel):
    key: str = Field(min_length=1, description="The field name to filter on")


class KeyedStringFilter(StringFilter, _Keyed):
    pass


class KeyedNumberFilter(NumberFilter, _Keyed):
    pass


class KeyedBooleanFilter(BooleanFilter, _Keyed):
    pass


class KeyedRangeFilter(RangeFilter, _Keyed):
    pass


class KeyedEnumFilter(EnumFilter, _Keyed):
    pass


class KeyedPresentFilter(PresentFilter, _Keyed):
    pass


# One of ``custom_analysis_data`` / ``custom_attributes``: a field's name (``key``) and a filter on its value, told
# apart by ``type`` (retell-sdk sends it with each).
KeyedFilter = Annotated[
    KeyedStringFilter | KeyedNumberFilter | KeyedBooleanFilter | KeyedRangeFilter | KeyedEnumFilter
    | KeyedPresentFilter, Field(discriminator="type")]


class AgentFilter(_Body):
    agent_id: str = Field(pattern=OBJECT_ID_PATTERN)   # the filter reads an index keyed by it
    version: list[int] = Field(default_factory=list)


class ChatFilter(_Body):
    """Retell's filters, ANDed, as retell-sdk's ``FilterCriteria`` types them. Most are served from indexes;
    ``combined_cost``, ``duration_ms``, ``custom_analysis_data``, ``custom_attributes`` and
    ``data_storage_setting`` are checked chat by chat (``chats.query``); ``agent_tag`` matches no chat, since
    Parley's agent versions carry no environment tags."""

    agent: list[AgentFilter] | None = None
    chat_id: StringFilter | EnumFilter | None = Field(default=None, description=(
        "A string filter, or the enum form: op in, a list of at most 1,000 chat ids"))
    chat_status: EnumFilter | None = None
    chat_type: EnumFilter | None = None
    start_timestamp: NumberFilter | RangeFilter | None = None
    end_timestamp: NumberFilter | RangeFilter | None = None
    user_number: NumberStringFilter | None = None
    agent_number: NumberStringFilter | None = None
    direction: EnumFilter | None = None
    disconnection_reason: EnumFilter | None = None
    chat_successful: BooleanFilter | None = None
    user_sentiment: EnumFilter | None = None
    agent_tag: EnumFilter | None = Field(default=None, description=(
        "Parley's agents have no environment tags: matches no chat"))
    combined_cost: NumberFilter | RangeFilter | None = Field(default=None, description=(
        "The chat_cost estimate's combined_cost (cents); a chat without an estimate matches no such filter"))
    duration_ms: NumberFilter | RangeFilter | None = Field(default=None, description=(
        "end_timestamp - start_timestamp; an ongoing chat's is now - start_timestamp"))
    custom_analysis_data: list[KeyedFilter] | None = Field(default=None, description=(
        "Each on chat_analysis.custom_analysis_data[key]; all must pass"))
    custom_attributes: list[KeyedFilter] | None = Field(default=None, description=(
        "Each on the chat's custom_attributes[key] (set with update-chat); all must pass"))
    data_storage_setting: EnumFilter | None = Field(default=None, description=(
        "The chat's setting from update-chat; a chat without one has Retell's default, everything"))

    @model_validator(mode="after")
    def _bounded(self) -> ChatFilter:
        if isinstance(self.chat_id, EnumFilter) and len(self.chat_id.value) > MAX_CHAT_IDS:
            raise ValueError(f"chat_id: at most {MAX_CHAT_IDS} ids in one list (got {len(self.chat_id.value)})")
        return self


MAX_CHAT_IDS = 1_000
MAX_SKIP = 10_000


class ListChatsRequest(_Body):
    filter_criteria: ChatFilter | None = None
    sort_order: Literal["ascending", "descending"] = "descending"
    limit: int = Field(default=50, ge=1, le=1000)
    pagination_key: str | None = None
    skip: int = Field(default=0, ge=0, le=MAX_SKIP, description=(
        f"Chats to leave out before the page (at most {MAX_SKIP:,}; past that, follow pagination_key); not with "
        "pagination_key"))
    include_total: bool = False

    @model_validator(mode="after")
    def _skip_or_key(self) -> ListChatsRequest:
        if self.skip and self.pagination_key:
            raise ValueError("skip: give skip or pagination_key, not both")
        return self


class ChatListItem(ChatResponse):
    """A chat without its transcript fields, as Retell's list returns them."""

    transcript: None = None  # type: ignore[assignment]
    message_with_tool_calls: None = None  # type: ignore[assignment]


class ListChatsResponse(BaseModel):
    items: list[ChatListItem]
    has_more: bool
    pagination_key: str | None = None
    total: int | None = None


class PageQuery(_Body):
    limit: int = Field(default=50, ge=1, le=1000)
    pagination_key: str | None = None
    sort_order: Literal["ascending", "descending"] = "descending"


class VersionQuery(_Body):
    version: AgentVersion | None = None


class CreateAgentVersionRequest(_Body):
    base_version: int = Field(ge=0, description="The version the new draft copies")


class PublishAgentVersionRequest(_Body):
    version: int = Field(ge=0, description="The draft to publish")
    version_title: str | None = None
    version_description: str | None = None


class DeleteVersionQuery(_Body):
    version: int = Field(ge=0)


class AgentVersionItem(BaseModel):
    version: int
    is_published: bool
    last_modification_timestamp: int
    base_version: int | None = None
    version_title: str | None = None
    version_description: str | None = None


class AgentVersionListResponse(BaseModel):
    items: list[AgentVersionItem]
    has_more: bool
    pagination_key: str | None = None


class AgentListItem(BaseModel):
    agent_id: str
    agent_name: str
    channel: Literal["chat"] = "chat"
    is_suspended: bool = False
    tags: dict[str, Any] = Field(default_factory=dict)
    user_modified_timestamp: int


class AgentListResponse(BaseModel):
    items: list[AgentListItem]
    has_more: bool
    pagination_key: str | None = None


class LLMListResponse(BaseModel):
    items: list[RetellLLM]
    has_more: bool
    pagination_key: str | None = None


class FlowListResponse(BaseModel):
    items: list[ConversationFlow]
    has_more: bool
    pagination_key: str | None = None


class ComponentAnswer(ConversationFlowComponent):
    """A shared conversation flow component as the API answers it: with the flows whose nodes (in any version)
    name it."""

    linked_conversation_flow_ids: list[str] = Field(default_factory=list)


class ComponentListResponse(BaseModel):
    items: list[ComponentAnswer]
    has_more: bool
    pagination_key: str | None = None


class DeleteFlowQuery(_Body):
    force_delete: bool = Field(default=False, description="Delete it even if agents still name it (they then name "
                                                          "a conversation flow that no longer exists)")


class PhoneNumberListResponse(BaseModel):
    items: list[PhoneNumber]
    has_more: bool
    pagination_key: str | None = None


class SendSmsRequest(_Body):
    """Parley's ``/send-sms``: exactly one of ``content`` (exact text), ``prompt`` (the LLM writes it) or
    Retell's ``sms_content``."""

    # The rule ``_one_source`` checks, stated in the schema too: exactly one of them is given, and not null.
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": [name], "properties": {name: {"not": {"type": "null"}}}}
        for name in ("content", "prompt", "sms_content")]})

    from_number: Address
    to_number: Address
    content: str | None = Field(default=None, min_length=1, max_length=1600)
    prompt: str | None = Field(default=None, min_length=1)
    sms_content: SmsContent | None = None
    transcript: str | list[dict[str, Any]] | None = None
    dynamic_variables: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> SendSmsRequest:
        given = [name for name in ("content", "prompt", "sms_content") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of content, prompt or sms_content (got {', '.join(given) or 'none'})")
        return self

    def exact_text(self) -> str | None:
        if self.content is not None:
            return self.content
        return self.sms_content.predefined if self.sms_content is not None else None

    def instructions(self) -> str | None:
        return self.prompt or (self.sms_content.prompt if self.sms_content is not None else None)


class SentSms(BaseModel):
    """A message Parley sent: its ids, Twilio's status, its measure, and the chat it was written into."""

    message_id: str
    chat_id: str
    message_sid: str | None = None
    status: str
    error_code: int | None = None
    error: str | None = None
    encoding: str | None = None
    segments: int | None = None
    content: str
    from_number: str
    to_number: str
    created_timestamp: int


class ToolCallRequest(BaseModel):
    """The body a Retell voice agent's custom function sends."""

    model_config = ConfigDict(extra="allow")

    name: str = ""
    args: dict[str, Any] = Field(default_factory=dict)
    call: dict[str, Any] = Field(default_factory=dict)


class ToolResult(BaseModel):
    result: str


class SendChatMessageRequest(_Body):
    chat_id: str = Field(min_length=1)
    content: str = Field(min_length=1, max_length=1600)
    role: Literal["agent", "human"] = "agent"


class OptOutItem(BaseModel):
    from_number: str
    to_number: str
    opted_out_at: int


class OptOutQuery(_Body):
    from_number: E164 | None = None


class ClearOptOutRequest(_Body):
    from_number: Address
    to_number: Address
    consent: str = Field(min_length=10, description="How the user consented again (kept in the log)")


class McpToolsQuery(_Body):
    """``GET /get-mcp-tools/{agent_id}``'s query: the server (``mcp_id``, a name in the ``mcps`` of the agent's
    engine, or of the conversation-flow component ``component_id``), and the agent version (the latest when left
    out)."""

    mcp_id: str = Field(min_length=1)
    component_id: str | None = None
    version: AgentVersion | None = None


class McpToolDefinition(BaseModel):
    """A tool an MCP server lists, as Retell answers it."""

    name: str
    description: str
    inputSchema: dict[str, Any]   # Retell's (and MCP's) spelling
