"""Retell's JSON shapes (pydantic), in one place: the agent and number files, and the chat object.

Agent files are Retell chat agents with their Retell LLM inline under ``retell_llm`` (an agent exported
from Retell's API drops in), plus Parley's own fields. Fields Retell has and Parley does not use are kept
(``extra="allow"``) so nothing is lost on the way through; ``unknown_fields`` lists them for ``parley check``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from service.settings import TWILIO_SID_PATTERN

if TYPE_CHECKING:
    from service.retell.flows import ConversationFlow

# ASCII digits: in Python ``\d`` matches every script's digits, which Twilio would refuse.
E164_RE = re.compile(r"^\+[1-9][0-9]{1,14}$")
# A number on a channel, as the API and Twilio write it: E.164, or ``<channel>:<E.164>`` (``service.address``).
ADDRESS_RE = re.compile(r"^(?:[a-z]+:)?\+[1-9][0-9]{1,14}$")
ChannelName = Literal["sms", "whatsapp"]   # the channels ``service.channels`` registers
TOOL_NAME_RE = r"^[a-zA-Z0-9_-]{1,64}$"
# An agent's or a Retell LLM's id (given, or drawn by the API). Ids are parts of Redis keys: nothing else is one.
OBJECT_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
# A dynamic variable's name, as ``{{name}}`` writes it.
VARIABLE_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

RETELL_MIN_SILENCE_MS = 120_000
RETELL_MAX_SILENCE_MS = 259_200_000


def _documented(pattern: re.Pattern[str]) -> WithJsonSchema:
    """``pattern`` in the JSON schema (``/openapi.json``), with the whitespace ``_matching`` strips around it."""
    return WithJsonSchema({"type": "string", "pattern": "^\\s*" + pattern.pattern.strip("^$") + "\\s*$"})


def _matching(pattern: re.Pattern[str], expected: str) -> AfterValidator:
    """A validator that strips a string and accepts it when it matches ``pattern``."""
    def check(value: str) -> str:
        value = value.strip()
        if not pattern.fullmatch(value):
            raise ValueError(f"{value!r} is not {expected}")
        return value
    return AfterValidator(check)


# Fields Parley sets (versions, timestamps): a client may send them back as it got them, and the API drops them
# (``READ_ONLY`` in api/agents.py, api/numbers.py). So a request's schema takes any value there; answers keep the type.
IGNORED_IN_REQUESTS = WithJsonSchema({"description": "Set by Parley: ignored in a request"}, mode="validation")

E164 = Annotated[str, _matching(E164_RE, "an E.164 number like +14155550123"), _documented(E164_RE)]
Address = Annotated[str, _matching(ADDRESS_RE, "an E.164 number like +14155550123 (or whatsapp:+14155550123)"),
                    _documented(ADDRESS_RE)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


# Retell's AgentVersionReference: a version number, "latest" (the highest number, draft or published) or
# "latest_published". Retell's other strings name environment tags, which only its dashboard assigns: Parley has none.
def _version_reference(value: Any) -> Any:
    # One clear error for every string that is not a reference Parley resolves (the value is not echoed: a
    # webhook's answer may hold secrets), instead of one per member of the union.
    if isinstance(value, str) and value not in ("latest", "latest_published") and not value.isdigit():
        raise ValueError("expected a version number, latest or latest_published (an environment tag like prod "
                         "names nothing: Parley has none)")
    return value


AgentVersion = Annotated[
    Annotated[int, Field(ge=0)] | Literal["latest", "latest_published"],
    BeforeValidator(_version_reference),
    Field(description="A version number, latest (the highest, draft or not) or latest_published (Parley has no "
                      "environment tags)"),
]


class EndChatTool(_Model):
    """Ends the chat after the agent's reply (Retell's ``end_call``; ``end_chat`` is accepted too)."""

    type: Literal["end_call", "end_chat"]
    name: str = Field(default="end_chat", pattern=TOOL_NAME_RE)
    description: str = "End the conversation when the user is done or asks to stop."


# A JSON path into a tool's response, as Retell's ``response_variables`` write them: ``data.user.name``,
# ``items[0].id``, optionally starting with ``$.``.
JSON_PATH_RE = re.compile(r"^(?:\$\.?)?(?:[^.\[\]]+|\[\d+\])(?:\.[^.\[\]]+|\[\d+\])*$")


def _json_paths(value: dict[str, str]) -> dict[str, str]:
    for name, path in value.items():
        if not JSON_PATH_RE.fullmatch(path.strip()):
            raise ValueError(f"{name}: {path!r} is not a JSON path like data.user.name or items[0].id")
    return {name: path.strip() for name, path in value.items()}


# Variable name -> JSON path in a tool's response; the values become the chat's dynamic variables.
ResponseVariables = Annotated[dict[Annotated[str, Field(pattern=VARIABLE_NAME_PATTERN)], str],
                              AfterValidator(_json_paths)]


class CustomTool(_Model):
    """An HTTP function: Parley sends ``{"name", "args", "chat"}`` to ``url`` (``args_at_root``: the arguments
    at the top level); the response is the result, and ``response_variables`` pick values out of it."""

    type: Literal["custom"]
    name: str = Field(pattern=TOOL_NAME_RE)
    description: str = ""
    url: str = Field(pattern=r"^https?://")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    query_params: dict[str, str] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    args_at_root: bool = False
    timeout_ms: int = Field(default=120_000, ge=1_000, le=600_000)
    response_variables: ResponseVariables = Field(default_factory=dict)


# The text Parley sends for Retell's ``info_collection`` template (Retell does not publish its wording).
INFO_COLLECTION_TEXT = "Hi! To help you, we need a few details. Please reply to this message with them."


class SmsContent(_Model):
    """Retell's ``sms_content``: a predefined text (``text``, or the older ``content``), an inferred one (the
    model writes it, guided by ``prompt``), or a ``template``. ``type`` may be left out, as the SDK allows:
    it is then read from the fields given."""

    type: Literal["predefined", "inferred", "template"]
    text: str | None = None
    content: str | None = None
    prompt: str | None = None
    template: Literal["info_collection"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _type_from_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") is None:
            kind = ("template" if data.get("template") else "predefined" if data.get("text") or data.get("content")
                    else "inferred" if data.get("prompt") else None)
            if kind is None:
                raise ValueError("sms_content needs text (predefined), a prompt (inferred) or a template")
            return {**data, "type": kind}
        return data

    @model_validator(mode="after")
    def _complete(self) -> SmsContent:
        if self.type == "predefined" and not (self.text or self.content):
            raise ValueError("a predefined sms_content needs text")
        if self.type == "inferred" and not self.prompt:
            raise ValueError("an inferred sms_content needs a prompt")
        if self.type == "template" and not self.template:
            raise ValueError("a template sms_content needs template: info_collection")
        return self

    @property
    def predefined(self) -> str | None:
        """The text to send as it is (``{{variables}}`` still to render); None when the model writes it."""
        if self.type == "template":
            return INFO_COLLECTION_TEXT
        return (self.text or self.content) if self.type == "predefined" else None


class SmsDestination(_Model):
    """Who a ``send_sms`` tool texts: the chat's user (``customer_number``), or ``phone_number`` (which may hold
    ``{{variables}}``)."""

    type: Literal["customer_number", "phone_number"]
    phone_number: str | None = None
    ignore_e164_validation: bool = False

    @model_validator(mode="after")
    def _has_a_number(self) -> SmsDestination:
        number = (self.phone_number or "").strip()
        if self.type == "phone_number" and not number:
            raise ValueError("a phone_number destination needs phone_number")
        if number and "{{" not in number and not self.ignore_e164_validation and not E164_RE.fullmatch(number):
            raise ValueError(f"phone_number {number!r} is not an E.164 number like +14155550123")
        return self


class SmsSender(_Model):
    type: Literal["current_number", "retell_long_code"]


class SendSmsTool(_Model):
    """Retell's ``send_sms`` tool: sends a separate text during the chat, to ``sms_destination`` (by default
    the chat's user) from the chat's number. Parley's older ``to_number`` is read as a ``phone_number``
    destination."""

    type: Literal["send_sms"]
    name: str = Field(default="send_sms", pattern=TOOL_NAME_RE)
    description: str = "Send the user a text message."
    sms_content: SmsContent
    sms_destination: SmsDestination | None = None
    sms_sender: SmsSender | None = None
    to_number: str | None = None

    @property
    def recipient(self) -> str | None:
        """The number to text (``{{variables}}`` still to render); None: the chat's user."""
        if self.sms_destination is not None:
            return self.sms_destination.phone_number if self.sms_destination.type == "phone_number" else None
        return self.to_number


class ExtractedVariable(_Model):
    """One variable an ``extract_dynamic_variable`` tool asks the model for."""

    type: Literal["string", "enum", "boolean", "number"]
    name: str = Field(pattern=VARIABLE_NAME_PATTERN)
    description: str = ""
    choices: list[str] = Field(default_factory=list)
    examples: list[str] = Field(default_factory=list)
    required: bool = False

    @model_validator(mode="after")
    def _enum_has_choices(self) -> ExtractedVariable:
        if self.type == "enum" and not self.choices:
            raise ValueError(f"{self.name}: an enum needs choices")
        return self


class ExtractDynamicVariableTool(_Model):
    """Retell's ``extract_dynamic_variable``: the model fills ``variables`` from the conversation; they become
    the chat's dynamic variables."""

    type: Literal["extract_dynamic_variable"]
    name: str = Field(pattern=TOOL_NAME_RE)
    description: str = "Record what the user said."
    variables: list[ExtractedVariable] = Field(min_length=1)


class McpServer(_Model):
    """One of a Retell LLM's ``mcps``: an MCP server Parley reaches over streamable HTTP. Its ``headers`` and
    ``query_params`` may hold ``{{variables}}``; ``timeout_ms`` bounds a whole call (connect, list, call)."""

    name: str = Field(min_length=1, max_length=200)
    url: str = Field(pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict)
    query_params: dict[str, str] = Field(default_factory=dict)
    timeout_ms: int = Field(default=120_000, ge=1_000, le=600_000)
    id: str | None = None   # not in Retell's SDK: an id an export may carry, which a tool's mcp_id may name

    def known_as(self, mcp_id: str) -> bool:
        """Whether a tool's ``mcp_id`` names this server: its ``name``, or its ``id``."""
        return mcp_id in (self.name, self.id)


class McpTool(_Model):
    """Retell's ``mcp`` tool: the tool ``name`` of the MCP server ``mcp_id`` names (one of the LLM's ``mcps``),
    offered to the model with ``description`` and ``input_schema``; ``response_variables`` as a custom tool's."""

    type: Literal["mcp"]
    name: str = Field(pattern=TOOL_NAME_RE)
    description: str = ""
    mcp_id: str | None = None
    input_schema: dict[str, Any] | None = None
    response_variables: ResponseVariables = Field(default_factory=dict)


def _swap_version(value: Any) -> Any:
    # Retell's SDK types it str | int: a number written as a string is read as one, "latest" as none.
    if isinstance(value, str):
        if value.strip().isdigit():
            return int(value)
        if value.strip().lower() == "latest":
            return None
        raise ValueError(f"{value!r} is not a version number (or \"latest\")")
    return value


# The agent version an agent swap goes to (None: the destination's latest).
SwapVersion = Annotated[Annotated[int, Field(ge=0)] | None, BeforeValidator(_swap_version)]


class AgentSwapTool(_Model):
    """Retell's ``agent_swap``: the chat goes on with another agent (``agent_version``, else its latest), its
    prompt, tools and model. ``post_call_analysis_setting`` says whose ``post_chat_analysis_data`` the analysis
    extracts: both agents', or only the destination's."""

    type: Literal["agent_swap"]
    name: str = Field(pattern=TOOL_NAME_RE)
    description: str = "Hand the conversation to another agent."
    agent_id: str = Field(pattern=OBJECT_ID_PATTERN)
    agent_version: SwapVersion = None
    post_call_analysis_setting: Literal["both_agents", "only_destination_agent"]
    webhook_setting: Literal["both_agents", "only_destination_agent", "only_source_agent"] | None = None


class UnsupportedTool(_Model):
    """A Retell tool type Parley does not run yet (voice-only, calendar, ...). Kept, not offered to the LLM."""

    type: Literal[
        "transfer_call", "check_availability_cal", "book_appointment_cal", "press_digit",
        "code", "bridge_transfer", "cancel_transfer",
    ]
    name: str = ""


Tool = Annotated[EndChatTool | CustomTool | SendSmsTool | ExtractDynamicVariableTool | McpTool | AgentSwapTool
                 | UnsupportedTool, Field(discriminator="type")]


STATE_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


class StateEdge(_Model):
    """A way out of a state: the model moves by calling ``transition_to_{destination_state_name}``, whose
    arguments (``parameters``) become dynamic variables of the later states."""

    destination_state_name: str = Field(pattern=STATE_NAME_PATTERN)
    description: str = ""
    parameters: dict[str, Any] | None = None

    @property
    def tool_name(self) -> str:
        return f"transition_to_{self.destination_state_name}"


class State(_Model):
    """One state of a multi-state Retell LLM: its prompt (after the general prompt), tools and edges."""

    name: str = Field(pattern=STATE_NAME_PATTERN)
    state_prompt: str = ""
    edges: list[StateEdge] = Field(default_factory=list)
    tools: list[Tool] = Field(default_factory=list)


class ModelRef(_Model):
    """A model in Retell's ``model_config``: its name as Retell writes it (``gpt-4.1``, ``claude-4.5-sonnet``...),
    which ``PARLEY_LLM_MODELS`` or the agent's ``llm_models`` may map to a name the LLM server knows."""

    model: str = Field(min_length=1, max_length=200)
    tier: Literal["standard", "fast", "ultrafast"] | None = None   # a Retell capacity tier: reported, not used


class BackupModelRef(ModelRef):
    kick_in_timeout_ms: int | None = Field(default=None, ge=0)   # Retell's hedging delay: reported, not used


class ModelConfig(_Model):
    """Retell's ``model_config``: the model that answers (``primary``), the one that answers when it fails
    (``backup``), and the temperature. Only the ``cascading`` type (a text LLM) can run a chat."""

    type: Literal["cascading"] | None = "cascading"   # null (as the SDK allows) is read as cascading
    primary: ModelRef | None = None
    backup: BackupModelRef | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)

    @field_validator("type", mode="before")
    @classmethod
    def _text_models_only(cls, value: Any) -> Any:
        if value == "s2s":
            raise ValueError("'s2s' is a speech-to-speech model for voice calls and cannot answer a chat; "
                             "use 'cascading' with a text model as primary")
        return "cascading" if value is None else value


class KBConfig(_Model):
    """Retell's ``kb_config``: how many knowledge-base chunks a turn retrieves, and the least relevance they need
    (``service.knowledge.search``); what is left out takes Retell's defaults, 3 and 0.6."""

    top_k: int | None = Field(default=None, ge=1, le=10)
    filter_score: float | None = Field(default=None, ge=0, le=1)


class RetellLLM(_Model):
    """The response engine: prompt, first message, model, tools. Versioned with its agents: an update edits a
    draft version in place; publishing an agent version publishes the LLM version it names (``catalog.store``).

    The model is ``model_config`` (``primary``, ``backup``, ``temperature``) when set, else the deprecated
    ``model`` and ``model_temperature``, as Retell reads them.
    """

    # ``model_config`` is pydantic's own attribute, so the field has another name, read and written as Retell's.
    model_config = ConfigDict(extra="allow", frozen=True, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)

    llm_id: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]{0,128}$")
    version: Annotated[int, IGNORED_IN_REQUESTS] = Field(default=0, ge=0)
    is_published: Annotated[bool, IGNORED_IN_REQUESTS] = False
    last_modification_timestamp: Annotated[int, IGNORED_IN_REQUESTS] = 0
    model: str = "gpt-4.1"
    model_temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    models: ModelConfig | None = Field(default=None, alias="model_config")
    general_prompt: str = ""
    begin_message: str | None = None
    general_tools: list[Tool] = Field(default_factory=list)
    states: list[State] = Field(default_factory=list)
    starting_state: str | None = None
    default_dynamic_variables: dict[str, str] = Field(default_factory=dict)
    mcps: list[McpServer] = Field(default_factory=list)
    # Searched every turn; the chunks found go into the prompt (service.agent.retrieval).
    knowledge_base_ids: list[Annotated[str, Field(pattern=OBJECT_ID_PATTERN)]] | None = None
    kb_config: KBConfig | None = None

    @property
    def primary_model(self) -> str:
        """The model that answers: ``model_config.primary``, else ``model``."""
        return self.models.primary.model if self.models is not None and self.models.primary else self.model

    @property
    def backup_model(self) -> str | None:
        """The model that answers when the primary fails (errors, time-outs, its breaker open), if any."""
        return self.models.backup.model if self.models is not None and self.models.backup else None

    @property
    def temperature(self) -> float:
        """``model_config.temperature`` (0 when it is left out) once there is a ``model_config``: Retell then
        ignores ``model_temperature``."""
        if self.models is not None:
            return self.models.temperature if self.models.temperature is not None else 0.0
        return self.model_temperature


    @field_validator("general_tools")
    @classmethod
    def _unique_tool_names(cls, tools: list[Any]) -> list[Any]:
        names = [t.name for t in tools if not isinstance(t, UnsupportedTool)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tool names must be unique; repeated: {', '.join(dupes)}")
        return tools

    @model_validator(mode="after")
    def _states_hold_together(self) -> RetellLLM:
        """Retell's rules: unique state names, a starting state among them, edges to states that exist, and
        tool names unique among everything the model sees in a state (general tools, the state's, its edges')."""
        names = [state.name for state in self.states]
        if repeated := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"states: names must be unique; repeated: {', '.join(repeated)}")
        if self.states and self.starting_state is None:
            raise ValueError(f"starting_state: required when there are states (one of {', '.join(names)})")
        if self.starting_state is not None and self.starting_state not in names:
            raise ValueError(f"starting_state: no state named {self.starting_state!r} "
                             f"(states: {', '.join(names) or 'none'})")
        general = [t.name for t in self.general_tools if not isinstance(t, UnsupportedTool)]
        for index, state in enumerate(self.states):
            for number, edge in enumerate(state.edges):
                if edge.destination_state_name not in names:
                    raise ValueError(f"states.{index}.edges.{number}.destination_state_name: no state named "
                                     f"{edge.destination_state_name!r} (states: {', '.join(names)})")
            seen = general + [t.name for t in state.tools if not isinstance(t, UnsupportedTool)] + [
                edge.tool_name for edge in state.edges]
            if repeated := sorted({n for n in seen if seen.count(n) > 1}):
                raise ValueError(f"states.{index} ({state.name}): tool names must be unique among the general "
                                 f"tools, the state's tools and its transitions; repeated: {', '.join(repeated)}")
        return self

    @model_validator(mode="after")
    def _mcp_tools_name_servers(self) -> RetellLLM:
        """Every ``mcp`` tool names one of ``mcps`` (or leaves ``mcp_id`` out when there is exactly one)."""
        names = [server.name for server in self.mcps]
        if repeated := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"mcps: names must be unique; repeated: {', '.join(repeated)}")
        placed = [(f"general_tools.{i}", t) for i, t in enumerate(self.general_tools)] + [
            (f"states.{s}.tools.{i}", t) for s, state in enumerate(self.states) for i, t in enumerate(state.tools)]
        for where, tool in placed:
            if isinstance(tool, McpTool) and self.mcp_server(tool) is None:
                known = ", ".join(names) or "none"
                what = f"no server in mcps is named {tool.mcp_id!r}" if tool.mcp_id is not None else \
                    "required unless mcps holds exactly one server"
                raise ValueError(f"{where}.mcp_id (tool {tool.name!r}): {what} (mcps: {known})")
        return self

    def mcp_server(self, tool: McpTool) -> McpServer | None:
        """The server of ``tool``: the one its ``mcp_id`` names, or the only one when it names none."""
        if tool.mcp_id is None:
            return self.mcps[0] if len(self.mcps) == 1 else None
        return next((server for server in self.mcps if server.known_as(tool.mcp_id)), None)

    def state(self, name: str | None) -> State | None:
        """The state called ``name``, else the starting one (None without states)."""
        by_name = {state.name: state for state in self.states}
        return by_name.get(name or "") or by_name.get(self.starting_state or "")


EventKind = Literal["chat_started", "chat_ended", "chat_analyzed", "transcript_updated"]
DEFAULT_EVENTS: tuple[EventKind, ...] = ("chat_started", "chat_ended", "chat_analyzed")


ANALYSIS_PRESETS = ("chat_summary", "chat_successful", "user_sentiment")


class AnalysisField(_Model):
    """One item of ``post_chat_analysis_data``: a field the post-chat analysis extracts (string, enum, boolean,
    number), or a ``system-presets`` item that rewords one of Retell's own three fields or makes it optional."""

    type: Literal["string", "enum", "boolean", "number", "system-presets"]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    # Custom fields: optional unless true (a required one the model cannot fill marks the chat unsuccessful).
    # Presets: required unless false, as in Retell.
    required: bool | None = None
    conditional_prompt: str | None = None   # when to fill the field (ignored when it is required)
    choices: list[str] = Field(default_factory=list)
    examples: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _complete(self) -> AnalysisField:
        if self.type == "enum" and not self.choices:
            raise ValueError(f"{self.name}: an enum needs choices")
        if self.type == "system-presets" and self.name not in ANALYSIS_PRESETS:
            raise ValueError(f"{self.name}: a system-presets item names one of {', '.join(ANALYSIS_PRESETS)}")
        return self

    @property
    def is_required(self) -> bool:
        return self.required is not False if self.type == "system-presets" else self.required is True


ENGINES_NOT_RUN = {
    "custom-llm": "custom-llm agents (your own LLM websocket) do not run in Parley",
}


class ResponseEngine(_Model):
    """What answers for the agent, at which version (the API pins the latest when none is given): a Retell LLM
    (``llm_id``) or a conversation flow (``conversation_flow_id``)."""

    type: Literal["retell-llm", "conversation-flow"] = "retell-llm"

    @field_validator("type", mode="before")
    @classmethod
    def _runnable(cls, value: Any) -> Any:
        if value in ENGINES_NOT_RUN:
            raise ValueError(f"{value!r}: {ENGINES_NOT_RUN[value]}; retell-llm and conversation-flow agents run")
        return value
    llm_id: str | None = Field(default=None, pattern=OBJECT_ID_PATTERN)
    conversation_flow_id: str | None = Field(default=None, pattern=OBJECT_ID_PATTERN)
    version: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _names_its_engine(self) -> ResponseEngine:
        if self.type == "retell-llm" and not self.llm_id:
            raise ValueError("a retell-llm response_engine needs llm_id")
        if self.type == "conversation-flow" and not self.conversation_flow_id:
            raise ValueError("a conversation-flow response_engine needs conversation_flow_id")
        return self

    @property
    def is_flow(self) -> bool:
        return self.type == "conversation-flow"

    @property
    def engine_id(self) -> str:
        """The id of the Retell LLM or conversation flow it names."""
        return (self.conversation_flow_id if self.is_flow else self.llm_id) or ""

    @classmethod
    def of(cls, engine: RetellLLM | ConversationFlow) -> ResponseEngine:
        """The response engine naming ``engine`` at its version."""
        if isinstance(engine, RetellLLM):
            return cls(llm_id=engine.llm_id, version=engine.version)
        return cls(type="conversation-flow", conversation_flow_id=engine.conversation_flow_id,
                   version=engine.version)


class ChatAgent(_Model):
    """A chat agent: Retell's chat-agent fields and Parley's. One object per version: an update edits a draft
    in place, ``/publish-agent-version`` freezes it, ``/create-agent-version`` copies one into a new draft.

    In files the Retell LLM is inline under ``retell_llm``, or the conversation flow under ``conversation_flow``
    (either becomes its own object when loaded); through the API the agent names one in ``response_engine``.
    """

    # Empty only until it is given one: from the file's name, or made up by /create-chat-agent.
    agent_id: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]{0,128}$")
    version: Annotated[int, IGNORED_IN_REQUESTS] = Field(default=0, ge=0)
    is_published: Annotated[bool, IGNORED_IN_REQUESTS] = False
    base_version: Annotated[int | None, IGNORED_IN_REQUESTS] = None
    last_modification_timestamp: Annotated[int, IGNORED_IN_REQUESTS] = 0
    version_title: str | None = None
    version_description: str | None = None
    channel: Literal["chat"] = "chat"
    agent_name: str | None = None
    response_engine: ResponseEngine | None = None
    retell_llm: RetellLLM | None = None
    conversation_flow: ConversationFlow | None = None
    end_chat_after_silence_ms: int = Field(default=3_600_000, ge=1_000, le=RETELL_MAX_SILENCE_MS)
    auto_close_message: str | None = None
    language: str | list[str] = "en-US"
    timezone: str = "America/Los_Angeles"
    webhook_url: str | None = None
    webhook_events: list[EventKind] | None = None
    webhook_timeout_ms: int = Field(default=10_000, ge=1_000, le=60_000)
    post_chat_analysis_data: list[AnalysisField] = Field(default_factory=list)
    post_chat_analysis_model: str = "gpt-5.6-terra"   # Retell's default
    # Parley's own fields.
    burst_window_ms: int = Field(default=1_500, ge=0, le=60_000)
    max_reply_segments: int = Field(default=3, ge=1, le=10)
    fallback_message: str = "Sorry, I can't answer right now. Please try again in a few minutes."
    model_accepts_images: bool = False
    # This agent's model names as the LLM server knows them ("*": every other name); before PARLEY_LLM_MODELS.
    llm_models: dict[str, Annotated[str, Field(min_length=1, max_length=200)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _has_an_llm(self) -> ChatAgent:
        inline = [name for name in ("retell_llm", "conversation_flow") if getattr(self, name) is not None]
        if self.response_engine is None and not inline:
            raise ValueError("needs response_engine ({type: retell-llm, llm_id} or {type: conversation-flow, "
                             "conversation_flow_id}), or an inline retell_llm or conversation_flow")
        if len(inline) > 1:
            raise ValueError("has both retell_llm and conversation_flow: an agent answers with one of them")
        return self

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone like America/Los_Angeles") from None
        return value

    def warnings(self) -> list[str]:
        """Things that are allowed but worth saying at start."""
        out = []
        if self.end_chat_after_silence_ms < RETELL_MIN_SILENCE_MS:
            out.append(
                f"end_chat_after_silence_ms={self.end_chat_after_silence_ms} is below Retell's minimum of "
                f"{RETELL_MIN_SILENCE_MS} ms (fine for demos and tests)"
            )
        return out


class AgentWeight(_Model):
    agent_id: str = Field(pattern=OBJECT_ID_PATTERN)
    weight: float = Field(default=1.0, gt=0, le=1)
    agent_version: AgentVersion | None = None


def _weights_sum_to_one(agents: list[AgentWeight], field: str) -> None:
    if agents and abs(sum(a.weight for a in agents) - 1.0) > 1e-6:
        total = sum(a.weight for a in agents)
        raise ValueError(f"{field} weights must sum to 1, not {total:g}")


class PhoneNumber(_Model):
    """A Twilio number Parley answers on, in Retell's phone-number shape plus Parley's fields."""

    phone_number: E164
    phone_number_type: Annotated[Literal["custom"], IGNORED_IN_REQUESTS] = "custom"
    last_modification_timestamp: Annotated[int, IGNORED_IN_REQUESTS] = 0
    nickname: str | None = None
    inbound_sms_agents: list[AgentWeight] = Field(default_factory=list)
    outbound_sms_agents: list[AgentWeight] = Field(default_factory=list)
    inbound_sms_webhook_url: str | None = None
    twilio_account_sid: str | None = Field(default=None, pattern=TWILIO_SID_PATTERN)
    help_message: str | None = None
    # Parley's: the channels the number answers on and may start conversations on (Twilio's SMS and WhatsApp).
    channels: list[ChannelName] = Field(default_factory=lambda: list[ChannelName](["sms"]), min_length=1)
    daily_segment_limit: int | None = Field(default=None, ge=1)
    # Parley's: send at most this many segments a second from the number, across processes (off when unset).
    segments_per_second: float | None = Field(default=None, gt=0, le=1_000)
    allowed_outbound_country_list: list[str] | None = None
    # Parley's: import (and ``parley numbers sync``) points the number's Twilio SMS webhook at Parley and delete
    # puts back what was there (service/channels/twilio/numbers.py); false leaves Twilio's configuration alone.
    twilio_webhooks: bool = True
    # Parley's: when the number sits in a Messaging Service, point the service's own inbound URL at Parley
    # instead of turning on the service's UseInboundWebhookOnNumber (the number's webhook then wins).
    twilio_messaging_service_url: bool = False

    @field_validator("allowed_outbound_country_list")
    @classmethod
    def _iso_countries(cls, value: list[str] | None) -> list[str] | None:
        for code in value or []:
            if not re.fullmatch(r"[A-Za-z]{2}", code):
                raise ValueError(f"{code!r} is not an ISO 3166 alpha-2 country code like US")
        return [c.upper() for c in value] if value is not None else None

    @model_validator(mode="before")
    @classmethod
    def _legacy_single_agents(cls, data: Any) -> Any:
        # Retell's older singular fields: one agent with weight 1.
        if isinstance(data, dict):
            data = dict(data)
            for single, weighted in (("inbound_sms_agent_id", "inbound_sms_agents"),
                                     ("outbound_sms_agent_id", "outbound_sms_agents")):
                agent_id = data.pop(single, None)
                if agent_id and not data.get(weighted):
                    data[weighted] = [{"agent_id": agent_id, "weight": 1}]
        return data

    @field_validator("channels")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"each channel once: {value}")
        return value

    @model_validator(mode="after")
    def _check_weights(self) -> PhoneNumber:
        _weights_sum_to_one(self.inbound_sms_agents, "inbound_sms_agents")
        _weights_sum_to_one(self.outbound_sms_agents, "outbound_sms_agents")
        return self


class ChatAnalysis(_Model):
    chat_summary: str | None = None
    user_sentiment: Literal["Negative", "Positive", "Neutral", "Unknown"] | None = None
    chat_successful: bool | None = None
    custom_analysis_data: dict[str, Any] | None = None


class ProductCost(_Model):
    product: str
    unit_price: float | None = None
    cost: float


class ChatCost(_Model):
    """Retell's ``chat_cost``, in cents. Parley's is an estimate from the prices in its settings."""

    product_costs: list[ProductCost] = Field(default_factory=list)
    combined_cost: float = 0


class ChatResponse(BaseModel):
    """Retell's chat object, with Parley's additive fields (numbers, direction, disconnection reason)."""

    model_config = ConfigDict(extra="allow")

    chat_id: str
    agent_id: str
    version: int | None = None
    chat_status: Literal["ongoing", "ended", "error"]
    chat_type: Literal["api_chat", "sms_chat"]
    from_number: str | None = None
    to_number: str | None = None
    direction: Literal["inbound", "outbound"] | None = None
    start_timestamp: int
    end_timestamp: int | None = None
    disconnection_reason: str | None = None
    chat_cost: ChatCost | None = None
    transcript: str = ""
    message_with_tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    retell_llm_dynamic_variables: dict[str, str] = Field(default_factory=dict)
    collected_dynamic_variables: dict[str, str] = Field(default_factory=dict)
    current_node: str | None = None   # Parley's: the conversation flow's node the chat is at (its name, else id)
    metadata: dict[str, Any] = Field(default_factory=dict)
    custom_attributes: dict[str, str | int | float | bool] | None = None
    data_storage_setting: str | None = None  # Parley's: the setting given to update-chat (None: not set)
    chat_analysis: ChatAnalysis | None = None
    analysis_error: str | None = None
    inbound_webhook_error: str | None = None
    agent_paused: bool | None = None
    # Parley's: the channel of an sms_chat ("sms" or "whatsapp"; "dev": a test chat from the console's dev phone)
    channel: ChannelName | Literal["dev"] | None = None
    # Parley's (Retell's calls have knowledge_base_retrieved_contents_url): each turn's knowledge-base retrieval,
    # oldest first: the question, and the chunks put in the prompt (knowledge base, chunk id, title, score, excerpt).
    knowledge_base_retrieved_contents: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    """Retell's error envelope."""

    status: Literal["error"] = "error"
    message: str


# A conversation flow's shapes use the tools above, and an agent file may hold one inline: the flows module is
# imported last, so it finds this one complete, and it completes ChatAgent once ConversationFlow exists (whichever
# of the two modules is imported first).
import service.retell.flows  # noqa: E402,F401
