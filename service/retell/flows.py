"""Retell's conversation flows (pydantic): a graph of nodes joined by edges, the response engine a
``conversation-flow`` agent answers with, and the shared components flows call.

The shapes are retell-sdk's (``retell/types/conversation_flow_response.py``); fields Retell has that Parley does
not use are kept (``extra="allow"``). The validators hold the graph together (unique node ids, a start node that
exists, edges to nodes that exist, equations that can be evaluated, tools, MCP servers and components that
exist) with errors that name the node and the field. What is allowed but suspicious (a node nothing reaches) is
in ``ConversationFlow.warnings``. ``service.agent.flow`` runs them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, field_validator, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from service.retell.models import (
    IGNORED_IN_REQUESTS,
    INFO_COLLECTION_TEXT,
    VARIABLE_NAME_PATTERN,
    ChatAgent,
    CustomTool,
    ExtractedVariable,
    KBConfig,
    McpServer,
    ModelConfig,
    ResponseVariables,
    SmsDestination,
    SmsSender,
    SwapVersion,
    Tool,
)
from service.validation import Problems


class _Model(BaseModel):
    # ``model_config`` is pydantic's own attribute: the field is ``models``, read and written as Retell's name.
    model_config = ConfigDict(extra="allow", frozen=True, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)


EQUATION_OPERATORS = ("==", "!=", ">", ">=", "<", "<=", "contains", "not_contains", "exists", "not_exist")
UNARY_OPERATORS = ("exists", "not_exist")
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


class PromptCondition(_Model):
    """A condition the model judges (``prompt`` says when the edge is taken)."""

    type: Literal["prompt"] = "prompt"
    prompt: str = Field(min_length=1)


class Equation(_Model):
    """``left operator right``, over ``{{variables}}``: Parley evaluates it without the model."""

    left: str = Field(min_length=1)
    operator: Literal["==", "!=", ">", ">=", "<", "<=", "contains", "not_contains", "exists", "not_exist"]
    right: str | None = None

    @model_validator(mode="after")
    def _parses(self) -> Equation:
        for side, text in (("left", self.left), ("right", self.right or "")):
            if text.count("{{") != text.count("}}") or any(not m.group(1) for m in _PLACEHOLDER.finditer(text)):
                raise ValueError(f"{side}: {text!r} has unbalanced or empty {{{{ }}}}")
        if self.operator not in UNARY_OPERATORS and self.right is None:
            raise ValueError(f"operator {self.operator!r} needs a right side (only exists and not_exist take none)")
        if self.operator in UNARY_OPERATORS and not _PLACEHOLDER.search(self.left):
            raise ValueError(f"operator {self.operator!r} asks whether a variable is set: left must be a "
                             f"{{{{variable}}}}, not {self.left!r}")
        return self


class EquationCondition(_Model):
    """Equations joined by ``&&`` (all) or ``||`` (any)."""

    type: Literal["equation"] = "equation"
    operator: Literal["&&", "||"] = "&&"
    equations: list[Equation] = Field(min_length=1)
    prompt: str | None = None   # Retell's label for the edge (an SMS node's "Sent successfully")


class EquationPromptCondition(_Model):
    """A global node's condition: equations that must hold, and optionally a prompt the model judges too."""

    type: Literal["equation_prompt"] = "equation_prompt"
    operator: Literal["&&", "||"] = "&&"
    equations: list[Equation] = Field(min_length=1)
    prompt_condition: PromptCondition | None = None


Condition = Annotated[PromptCondition | EquationCondition, Field(discriminator="type")]


class Edge(_Model):
    """A way out of a node. Without ``destination_node_id`` it leads nowhere in a flow, and out of a component."""

    id: str = Field(min_length=1)
    transition_condition: Condition
    destination_node_id: str | None = None


class _OrPlainText:
    """In the JSON schema (``/openapi.json``), a plain string is accepted beside the objects, as the validator
    reads it: a prompt condition."""

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"anyOf": [{"type": "string", "minLength": 1}, handler(schema)]}


_OR_PLAIN_TEXT = _OrPlainText()


class GlobalNodeSetting(_Model):
    """Makes a node reachable from every node while ``condition`` holds; ``go_back_conditions`` return to the
    node the chat came from; ``cool_down``: that many node steps after leaving it, it is not offered again."""

    condition: Annotated[PromptCondition | EquationCondition | EquationPromptCondition,
                         Field(discriminator="type"), _OR_PLAIN_TEXT]
    cool_down: float | None = Field(default=None, ge=0)
    go_back_conditions: list[Edge] = Field(default_factory=list)

    @field_validator("condition", mode="before")
    @classmethod
    def _plain_prompt(cls, value: Any) -> Any:
        return {"type": "prompt", "prompt": value} if isinstance(value, str) else value


class Instruction(_Model):
    """What a node says: a ``prompt`` the model follows, or ``static_text`` sent as written (variables rendered)."""

    type: Literal["prompt", "static_text"]
    text: str


class SmsInstruction(_Model):
    """What an SMS node sends: ``static_text`` as written, a ``prompt`` the model writes it from, or Retell's
    ``info_collection`` template."""

    type: Literal["prompt", "static_text", "template"]
    text: str | None = None
    template: Literal["info_collection"] | None = None

    @model_validator(mode="after")
    def _complete(self) -> SmsInstruction:
        if self.type == "template" and self.template is None:
            raise ValueError("a template instruction needs template: info_collection")
        if self.type != "template" and not (self.text or "").strip():
            raise ValueError(f"a {self.type} instruction needs text")
        return self

    @property
    def predefined(self) -> str | None:
        """The text to send as written (variables still to render); None when the model writes it."""
        return INFO_COLLECTION_TEXT if self.type == "template" else self.text if self.type == "static_text" else None


class ModelChoice(_Model):
    """Retell's older per-node model (``model_choice``), used when there is no ``model_config``."""

    type: Literal["cascading"] = "cascading"
    model: str = Field(min_length=1, max_length=200)


NODE_ID_PATTERN = r"^[^/\s][^/]{0,199}$"   # "/" joins a component node's id and its inner node's in a chat's place


class _Node(_Model):
    id: str = Field(pattern=NODE_ID_PATTERN)
    name: str | None = None
    global_node_setting: GlobalNodeSetting | None = None
    models: ModelConfig | None = Field(default=None, alias="model_config")
    model_choice: ModelChoice | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _empty_config(cls, value: Any) -> Any:
        return None if value == {} else value   # the SDK's "object" member: an empty model_config overrides nothing

    @property
    def label(self) -> str:
        """The node's name, else its id (what ``current_node`` and logs say)."""
        return self.name or self.id

    def exits(self) -> Iterator[tuple[str, Edge]]:
        """Every edge out of the node, with the field that holds it."""
        for index, edge in enumerate(getattr(self, "edges", None) or []):
            yield f"edges.{index}", edge
        for name in ("always_edge", "else_edge", "skip_response_edge", "edge", "success_edge", "failed_edge"):
            if (edge := getattr(self, name, None)) is not None:
                yield name, edge
        if self.global_node_setting is not None:
            for index, edge in enumerate(self.global_node_setting.go_back_conditions):
                yield f"global_node_setting.go_back_conditions.{index}", edge


class ConversationNode(_Node):
    """Talks with the user: ``instruction`` (a prompt, or static text said once on entering), ``edges`` judged
    when the user writes (equations first, then the prompts, offered to the model as transitions)."""

    type: Literal["conversation"]
    instruction: Instruction
    edges: list[Edge] = Field(default_factory=list)
    always_edge: Edge | None = None
    else_edge: Edge | None = None
    skip_response_edge: Edge | None = None
    knowledge_base_ids: list[str] = Field(default_factory=list)
    kb_config: KBConfig | None = None


class SubagentNode(ConversationNode):
    """A conversation node with tools: ``tools`` inline and ``tool_ids`` naming the flow's."""

    type: Literal["subagent"]   # type: ignore[assignment]
    tools: list[Tool] = Field(default_factory=list)
    tool_ids: list[str] = Field(default_factory=list)


class EndNode(_Node):
    """Ends the chat, after its ``instruction`` (the closing text) if it has one."""

    type: Literal["end"]
    instruction: Instruction | None = None


class FunctionNode(_Node):
    """Calls the flow's tool ``tool_id`` with arguments the model writes, then routes on the result."""

    type: Literal["function"]
    tool_id: str = Field(min_length=1)
    tool_type: Literal["local", "shared"] = "local"
    wait_for_result: bool = True
    instruction: Instruction | None = None
    speak_during_execution: bool = False
    edges: list[Edge] = Field(default_factory=list)
    else_edge: Edge | None = None


class McpNode(_Node):
    """Calls ``mcp_tool_name`` on the flow's MCP server ``mcp_id`` with arguments the model writes, then routes."""

    type: Literal["mcp"]
    mcp_id: str = Field(min_length=1)
    mcp_tool_name: str = Field(min_length=1)
    wait_for_result: bool = True
    instruction: Instruction | None = None
    speak_during_execution: bool = False
    response_variables: ResponseVariables = Field(default_factory=dict)
    edges: list[Edge] = Field(default_factory=list)
    else_edge: Edge | None = None


class BranchNode(_Node):
    """Routes at once, without a reply: the first edge whose condition holds, else ``else_edge``."""

    type: Literal["branch"]
    edges: list[Edge] = Field(default_factory=list)
    else_edge: Edge


class SmsNode(_Node):
    """Sends one SMS on entering, then takes ``success_edge`` or ``failed_edge``."""

    type: Literal["sms"]
    instruction: SmsInstruction
    success_edge: Edge
    failed_edge: Edge
    sms_destination: SmsDestination | None = None
    sms_sender: SmsSender | None = None

    @field_validator("sms_destination", "sms_sender", mode="before")
    @classmethod
    def _empty(cls, value: Any) -> Any:
        return None if value == {} else value


class ExtractNode(_Node):
    """The model fills ``variables`` from the conversation (they become the chat's), then the node routes."""

    type: Literal["extract_dynamic_variables"]
    variables: list[ExtractedVariable] = Field(min_length=1)
    edges: list[Edge] = Field(default_factory=list)
    else_edge: Edge | None = None


class AgentSwapNode(_Node):
    """Hands the chat to another agent; ``edge`` is taken when the swap cannot be made."""

    type: Literal["agent_swap"]
    agent_id: str = Field(min_length=1)
    agent_version: SwapVersion = None
    post_call_analysis_setting: Literal["both_agents", "only_destination_agent"] = "both_agents"
    webhook_setting: Literal["both_agents", "only_destination_agent", "only_source_agent"] | None = None
    instruction: Instruction | None = None
    edge: Edge | None = None


class ComponentNode(_Node):
    """Runs a component (``local``: one of the flow's ``components``; ``shared``: a conversation-flow component)
    from its start node; when the component leaves its own nodes, the node routes like a function node."""

    type: Literal["component"]
    component_id: str = Field(min_length=1)
    component_type: Literal["local", "shared"] = "local"
    edges: list[Edge] = Field(default_factory=list)
    else_edge: Edge | None = None


VOICE_ONLY_NODES = ("transfer_call", "press_digit", "bridge_transfer", "cancel_transfer")


class UnsupportedNode(_Node):
    """A node Parley does not run in a chat: the voice-only ones, and ``code`` (JavaScript). Reaching one takes
    its else edge (or its ``edge``), else ends the chat, recording why."""

    type: Literal["transfer_call", "press_digit", "bridge_transfer", "cancel_transfer", "code"]
    edges: list[Edge] = Field(default_factory=list)
    else_edge: Edge | None = None
    edge: Edge | None = None

    @property
    def why(self) -> str:
        if self.type == "code":
            return "code nodes (JavaScript) do not run in Parley"
        return f"{self.type} nodes are for voice calls and do nothing in a chat"


Node = Annotated[ConversationNode | SubagentNode | EndNode | FunctionNode | McpNode | BranchNode | SmsNode
                 | ExtractNode | AgentSwapNode | ComponentNode | UnsupportedNode, Field(discriminator="type")]


class FlowTool(CustomTool):
    """A flow's custom tool; function nodes name it by ``tool_id`` (or by ``name`` when it has none)."""

    tool_id: str | None = None


class AppTool(_Model):
    """Retell's integration-app tool (its marketplace apps): kept, reported, not run by Parley."""

    type: Literal["integration_app"]
    name: str = ""
    tool_id: str | None = None


AnyFlowTool = Annotated[FlowTool | AppTool, Field(discriminator="type")]


class _Graph(_Model):
    """Nodes, a start node, tools and MCP servers: what a flow and a component both have."""

    nodes: list[Node] = Field(default_factory=list)
    start_node_id: str | None = None
    tools: list[AnyFlowTool] = Field(default_factory=list)
    mcps: list[McpServer] = Field(default_factory=list)

    @property
    def start(self) -> Node | None:
        """The start node: ``start_node_id``, else the first node."""
        return self.node(self.start_node_id) if self.start_node_id else (self.nodes[0] if self.nodes else None)

    def node(self, node_id: str | None) -> Node | None:
        return next((n for n in self.nodes if n.id == node_id), None) if node_id else None

    def tool(self, tool_id: str) -> AnyFlowTool | None:
        """The tool a function node's ``tool_id`` names: by ``tool_id``, else by name."""
        return next((t for t in self.tools if t.tool_id == tool_id), None) or \
            next((t for t in self.tools if t.name == tool_id), None)

    def mcp_server(self, mcp_id: str) -> McpServer | None:
        return next((s for s in self.mcps if s.known_as(mcp_id)), None)

    def problems(self, *, inside_component: bool) -> list[str]:
        """What breaks the graph, each naming the node and field: duplicate ids, a start node or destination
        that does not exist, a tool or MCP server a node names that the graph lacks."""
        out: list[str] = []
        ids = [n.id for n in self.nodes]
        if repeated := sorted({i for i in ids if ids.count(i) > 1}):
            out.append(f"nodes: ids must be unique; repeated: {', '.join(repeated)}")
        if self.start_node_id is not None and self.start_node_id not in ids:
            out.append(f"start_node_id: no node has the id {self.start_node_id!r}")
        known = set(ids)
        for index, node in enumerate(self.nodes):
            where = f"nodes.{index} ({node.id})"
            for field, edge in node.exits():
                if edge.destination_node_id is not None and edge.destination_node_id not in known:
                    out.append(f"{where}.{field}.destination_node_id: no node has the id "
                               f"{edge.destination_node_id!r}")
                elif edge.destination_node_id is None and not inside_component and field != "else_edge" and \
                        not field.startswith("global_node_setting.go_back"):
                    out.append(f"{where}.{field}.destination_node_id: required (an edge must lead to a node)")
            if isinstance(node, FunctionNode) and node.tool_type == "local" and self.tool(node.tool_id) is None:
                names = ", ".join(t.tool_id or t.name for t in self.tools) or "none"
                out.append(f"{where}.tool_id: no tool in tools has the id {node.tool_id!r} (tools: {names})")
            if isinstance(node, McpNode) and self.mcp_server(node.mcp_id) is None:
                names = ", ".join(s.name for s in self.mcps) or "none"
                out.append(f"{where}.mcp_id: no server in mcps is named {node.mcp_id!r} (mcps: {names})")
            if isinstance(node, SubagentNode):
                for number, tool_id in enumerate(node.tool_ids):
                    if self.tool(tool_id) is None:
                        out.append(f"{where}.tool_ids.{number}: no tool in tools has the id {tool_id!r}")
        return out

    def unreachable(self) -> list[str]:
        """Nodes nothing leads to from the start node (global nodes are reachable from everywhere)."""
        start = self.start
        if start is None:
            return []
        seen = {start.id} | {n.id for n in self.nodes if n.global_node_setting is not None}
        todo = list(seen)
        while todo:
            node = self.node(todo.pop())
            for _, edge in node.exits() if node is not None else ():
                if edge.destination_node_id and edge.destination_node_id not in seen:
                    seen.add(edge.destination_node_id)
                    todo.append(edge.destination_node_id)
        return [n.id for n in self.nodes if n.id not in seen]


class Component(_Graph):
    """A component inline in a flow (``components``): a node graph a component node runs."""

    name: str = Field(min_length=1)
    id: str | None = None   # not in Retell's SDK: an id an export may carry; a component node names it or the name

    def known_as(self, component_id: str) -> bool:
        return component_id in (self.name, self.id)


class ConversationFlowComponent(Component):
    """A shared component (``/create-conversation-flow-component``): flows' component nodes name it by id."""

    conversation_flow_component_id: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]{0,128}$")
    user_modified_timestamp: Annotated[int, IGNORED_IN_REQUESTS] = 0

    @model_validator(mode="after")
    def _holds_together(self) -> ConversationFlowComponent:
        if problems := self.problems(inside_component=True):
            raise Problems(problems)
        return self


class ConversationFlow(_Graph):
    """The response engine of a ``conversation-flow`` agent. Versioned with its agents as a Retell LLM is."""

    conversation_flow_id: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]{0,128}$")
    version: Annotated[int, IGNORED_IN_REQUESTS] = Field(default=0, ge=0)
    is_published: Annotated[bool, IGNORED_IN_REQUESTS] = False
    last_modification_timestamp: Annotated[int, IGNORED_IN_REQUESTS] = 0
    global_prompt: str = ""
    start_speaker: Literal["user", "agent"] = "agent"   # who opens an API or outbound chat (Retell requires it)
    components: list[Component] = Field(default_factory=list)
    default_dynamic_variables: dict[Annotated[str, Field(pattern=VARIABLE_NAME_PATTERN)], str] = Field(
        default_factory=dict)
    models: ModelConfig | None = Field(default=None, alias="model_config")
    model_choice: ModelChoice | None = None
    model_temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    knowledge_base_ids: list[str] = Field(default_factory=list)
    kb_config: KBConfig | None = None
    begin_message: None = None   # a flow opens from its start node, not a begin_message

    @model_validator(mode="after")
    def _holds_together(self) -> ConversationFlow:
        problems = self.problems(inside_component=False)
        names = [c.name for c in self.components]
        if repeated := sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"components: names must be unique; repeated: {', '.join(repeated)}")
        for index, component in enumerate(self.components):
            problems += [f"components.{index} ({component.name}).{p}"
                         for p in component.problems(inside_component=True)]
        for index, node in enumerate(self.nodes):
            if isinstance(node, ComponentNode) and node.component_type == "local" and \
                    self.component(node.component_id) is None:
                problems.append(f"nodes.{index} ({node.id}).component_id: no component in components is named "
                                f"{node.component_id!r} (components: {', '.join(names) or 'none'})")
        if problems:
            raise Problems(problems)
        return self

    def component(self, component_id: str) -> Component | None:
        return next((c for c in self.components if c.known_as(component_id)), None)

    def warnings(self) -> list[str]:
        """What is allowed but likely a mistake: nodes nothing reaches."""
        out = [f"nodes: {node_id} cannot be reached from the start node" for node_id in self.unreachable()]
        for component in self.components:
            out += [f"components ({component.name}): {node_id} cannot be reached from its start node"
                    for node_id in component.unreachable()]
        return out

    @property
    def primary_model(self) -> str:
        """``model_config.primary``, else ``model_choice``, else Retell's default."""
        return model_of(self.models, self.model_choice) or "gpt-4.1"

    @property
    def backup_model(self) -> str | None:
        return self.models.backup.model if self.models is not None and self.models.backup else None

    @property
    def temperature(self) -> float:
        if self.models is not None and self.models.temperature is not None:
            return self.models.temperature
        return self.model_temperature if self.model_temperature is not None else 0.0


def model_of(config: ModelConfig | None, choice: ModelChoice | None) -> str | None:
    """The model a ``model_config`` (else a ``model_choice``) names; None when neither does."""
    if config is not None and config.primary is not None:
        return config.primary.model
    return choice.model if choice is not None else None


# ChatAgent holds an inline ConversationFlow (agent files): complete it now that the class exists (retell.models).
ChatAgent.model_rebuild(_types_namespace={"ConversationFlow": ConversationFlow})
