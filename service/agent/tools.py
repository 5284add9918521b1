"""The agent's tools: their OpenAI definitions, and running them.

``end_call``/``end_chat`` ends the chat after the reply. ``custom`` sends Retell's custom-function body
``{"name", "args", "chat"}`` to the tool's URL (``args_at_root`` sends the arguments at the top level), signed
as Retell signs it, and gives the LLM the response text (up to 15,000 characters, as Retell); its
``response_variables`` pick values out of the JSON response. Its URL, headers and query parameters have their
``{{variables}}`` rendered; the URL goes through the outbound policy (``service.outbound.fetch``): a URL the
policy refuses is a result saying so. ``send_sms`` texts the chat's user (or ``sms_destination``'s number)
through the turn's ``SmsHook``. ``extract_dynamic_variable`` takes the values the model gives for the declared
variables. ``mcp`` calls the tool of that name on the MCP server its ``mcp_id`` names (``service.agent.mcp``); its
result is capped and its ``response_variables`` picked like a custom tool's. ``agent_swap`` asks the responder to
go on with another agent (``ToolOutcome.swap``). Values a tool yields (``ToolOutcome.variables``) become the
chat's collected dynamic variables. Every failure is a tool result the LLM can read, never a crash.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import quote

import aiohttp
import orjson

from service.agent import mcp
from service.agent.variables import render
from service.errors import McpUnavailable, OutboundRefused
from service.outbound import fetch, header_problem
from service.retell.models import (
    AgentSwapTool,
    CustomTool,
    EndChatTool,
    ExtractDynamicVariableTool,
    ExtractedVariable,
    McpServer,
    McpTool,
    RetellLLM,
    SendSmsTool,
    State,
    StateEdge,
    UnsupportedTool,
)
from service.webhooks.events import SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

# Sends ``text`` to ``to`` (None: the chat's user); returns why it failed, or None when sent.
SmsHook = Callable[[str | None, str], Awaitable[str | None]]

MAX_RESULT_CHARS = 15_000   # Retell's limit on what a custom function's result gives the model
MAX_RESPONSE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What running a tool gave: the text the LLM reads, whether it worked, and whether the chat should end."""

    content: str
    successful: bool
    end_chat: bool = False
    variables: dict[str, str] = field(default_factory=dict)   # dynamic variables the tool yielded
    new_state: str | None = None   # a transition: the state the agent moves to
    swap: AgentSwapTool | None = None   # an agent swap: the agent the chat goes on with


@dataclass(frozen=True, slots=True)
class Transition:
    """A state's edge, offered to the model as the tool ``transition_to_{destination_state_name}``."""

    edge: StateEdge

    @property
    def name(self) -> str:
        return self.edge.tool_name


@dataclass(frozen=True, slots=True)
class ServerTool:
    """An ``mcp`` tool with the server its ``mcp_id`` names."""

    tool: McpTool
    server: McpServer
    type = "mcp"

    @property
    def name(self) -> str:
        return self.tool.name


# Everything the model may be offered: Retell's tool types and the transitions of multi-state agents.
Offered: TypeAlias = (EndChatTool | CustomTool | SendSmsTool | ExtractDynamicVariableTool | ServerTool | AgentSwapTool
                      | UnsupportedTool | Transition)


def offered(llm: RetellLLM, state: State | None) -> list[Offered]:
    """What the model may call in ``state``: the general tools, the state's own, and one transition per edge."""
    tools = [*llm.general_tools, *(state.tools if state is not None else [])]
    out: list[Offered] = []
    for tool in tools:
        if not isinstance(tool, McpTool):
            out.append(tool)
        elif (server := llm.mcp_server(tool)) is not None:   # the LLM's validator made sure there is one
            out.append(ServerTool(tool, server))
    return out + [Transition(edge) for edge in state.edges] if state is not None else out


def _mcp_schema(schema: dict[str, Any] | None) -> dict[str, Any]:
    """An ``mcp`` tool's ``input_schema`` as a JSON schema: as written when it is one; Retell's SDK types it as a
    map of names to types (``{"phone": "string"}``), which becomes one; none is an empty object."""
    if not schema:
        return {"type": "object", "properties": {}}
    if "type" in schema or "properties" in schema:
        return schema
    return {"type": "object", "properties": {name: {"type": kind} if isinstance(kind, str) else kind
                                             for name, kind in schema.items()}}


def tool_type(tools: list[Offered], name: str) -> str | None:
    """The type of the tool named ``name``, as Retell writes it on a ``tool_call_invocation`` (None: no such tool)."""
    tool = next((t for t in tools if getattr(t, "name", None) == name), None)
    if tool is None or isinstance(tool, Transition):
        return None
    kind = str(getattr(tool, "type", "")) or None
    return "end_call" if kind == "end_chat" else kind


def definitions(tools: list[Offered]) -> list[dict[str, Any]]:
    """The tools in OpenAI's function-calling format (unsupported Retell types are left out)."""
    out: list[dict[str, Any]] = []
    for tool in tools:
        if isinstance(tool, Transition):
            edge = tool.edge
            out.append({"type": "function", "function": {
                "name": tool.name, "description": edge.description or f"Move to {edge.destination_state_name}.",
                "parameters": edge.parameters or {"type": "object", "properties": {}}}})
            continue
        if isinstance(tool, EndChatTool):
            params: dict[str, Any] = {"type": "object", "properties": {}}
        elif isinstance(tool, CustomTool):
            params = tool.parameters or {"type": "object", "properties": {}}
        elif isinstance(tool, SendSmsTool):
            params = {"type": "object", "properties": {}}
            if tool.sms_content.type == "inferred":
                params = {"type": "object", "required": ["content"], "properties": {"content": {
                    "type": "string", "description": f"The text message to send. {tool.sms_content.prompt}"}}}
        elif isinstance(tool, ExtractDynamicVariableTool):
            params = {"type": "object", "properties": {v.name: _schema(v) for v in tool.variables},
                      "required": [v.name for v in tool.variables if v.required]}
        elif isinstance(tool, ServerTool):
            out.append({"type": "function", "function": {"name": tool.name, "description": tool.tool.description,
                                                         "parameters": _mcp_schema(tool.tool.input_schema)}})
            continue
        elif isinstance(tool, AgentSwapTool):
            params = {"type": "object", "properties": {}}
        else:
            continue
        out.append({"type": "function",
                    "function": {"name": tool.name, "description": tool.description, "parameters": params}})
    return out


async def run(
    tools: list[Offered], name: str, arguments: str, *, http: aiohttp.ClientSession,
    chat: Callable[[], dict[str, Any]], values: dict[str, str], sms: SmsHook | None, signing_key: str | None = None,
) -> ToolOutcome:
    """Run the tool the LLM called (one of ``tools``, what ``offered`` gave)."""
    tool = next((t for t in tools if getattr(t, "name", None) == name), None)
    if isinstance(tool, EndChatTool):
        return ToolOutcome("The chat will end after your next message. Say a short goodbye.", True, end_chat=True)
    if isinstance(tool, AgentSwapTool):   # the responder makes the swap (or says why it could not)
        return ToolOutcome(f"The chat goes on with agent {tool.agent_id}.", True, swap=tool)
    if not isinstance(tool, CustomTool | SendSmsTool | ExtractDynamicVariableTool | Transition | ServerTool):
        return ToolOutcome(f"There is no tool named {name!r}.", False)
    try:
        args = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return ToolOutcome("The arguments were not valid JSON.", False)
    if not isinstance(args, dict):
        return ToolOutcome("The arguments must be a JSON object.", False)
    if isinstance(tool, SendSmsTool):
        return await _send_sms(tool, args, values=values, sms=sms)
    if isinstance(tool, ExtractDynamicVariableTool):
        return _extract(tool, args)
    if isinstance(tool, Transition):
        destination = tool.edge.destination_state_name
        return ToolOutcome(f"Moved to the state {destination}.", True, new_state=destination,
                           variables={key: _as_variable(value) for key, value in args.items() if value is not None})
    try:
        if isinstance(tool, ServerTool):
            return await _call_mcp(tool, args, http=http, values=values)
        return await _call(tool, args, http=http, chat=chat(), values=values, signing_key=signing_key)
    except Exception as exc:   # not CancelledError (a BaseException): a shutdown still stops the turn
        # An HTTP tool must not break the turn: whatever else went wrong (a header aiohttp refuses, a bug) is a
        # result the LLM reads. The details go to the log, not to the LLM.
        log.exception("tool failed unexpectedly", extra={"tool": name})
        return ToolOutcome(f"The tool failed: {exc.__class__.__name__}", False)


async def _send_sms(tool: SendSmsTool, args: dict[str, Any], *, values: dict[str, str],
                    sms: SmsHook | None) -> ToolOutcome:
    """Retell's results: "Sent successfully" or "Failed to send" (with why)."""
    text = tool.sms_content.predefined
    text = render(text, values) if text is not None else str(args.get("content") or "")
    to = render(tool.recipient, values).strip() if tool.recipient else None
    if sms is None:
        return ToolOutcome("Failed to send: this chat has no phone number.", False)
    if not text.strip():
        return ToolOutcome("Failed to send: the message is empty.", False)
    error = await sms(to, text)
    return ToolOutcome("Sent successfully" if error is None else f"Failed to send: {error}", error is None)


async def _call(
    tool: CustomTool, args: dict[str, Any], *, http: aiohttp.ClientSession, chat: dict[str, Any],
    values: dict[str, str], signing_key: str | None = None,
) -> ToolOutcome:
    body = {**args} if tool.args_at_root else {"name": tool.name, "args": args, "chat": chat}
    if tool.args_at_root:
        body.setdefault("chat", chat)
    payload = orjson.dumps(body)
    headers = {"Content-Type": "application/json"}
    for name, template in tool.headers.items():
        headers[name] = value = render(template, values)
        if (problem := header_problem(name, value)) is not None:
            return ToolOutcome(f"The tool's header {name} could not be sent: {problem}.", False)
    query = {name: render(template, values) for name, template in tool.query_params.items()}
    if signing_key:   # Retell signs its custom-function requests: the receiver checks them with retell-sdk's verify
        headers[SIGNATURE_HEADER] = sign(payload, signing_key)
    # The URL may hold {{variables}}; the policy judges it as rendered (in fetch, and again after DNS). Values
    # are percent-encoded, so a variable fills a path segment or a query value: it cannot add a host, a "/..",
    # a "?" or an "@".
    url = render(tool.url, {name: quote(value, safe="") for name, value in values.items()})
    try:
        answer = await fetch(http, tool.method, url, params=query or None, data=payload, headers=headers,
                             timeout_s=tool.timeout_ms / 1000, max_bytes=MAX_RESPONSE_BYTES)
    except OutboundRefused as exc:
        log.warning("tool url refused", extra={"tool": tool.name, "error": str(exc)})
        return ToolOutcome(f"The tool's URL is not allowed: {exc}", False)
    except TimeoutError:
        return ToolOutcome(f"The tool did not answer within {tool.timeout_ms} ms.", False)
    except aiohttp.ClientError as exc:
        return ToolOutcome(f"The tool could not be reached: {exc.__class__.__name__}", False)
    text = answer.body.decode("utf-8", errors="replace")
    if answer.status >= 400:
        return ToolOutcome(f"The tool failed with HTTP {answer.status}: {text[:MAX_RESULT_CHARS]}", False)
    return ToolOutcome(text[:MAX_RESULT_CHARS], True, variables=_response_variables(tool, answer.body))


async def _call_mcp(bound: ServerTool, args: dict[str, Any], *, http: aiohttp.ClientSession,
                    values: dict[str, str]) -> ToolOutcome:
    tool = bound.tool
    try:
        answer = await mcp.call_tool(http, bound.server, tool.name, args, values)
    except OutboundRefused as exc:
        log.warning("mcp server url refused", extra={"tool": tool.name, "error": str(exc)})
        return ToolOutcome(f"The MCP server's URL is not allowed: {exc}", False)
    except McpUnavailable as exc:
        return ToolOutcome(f"The tool could not run: {exc}.", False)
    if not answer.ok:
        return ToolOutcome(f"The tool failed: {answer.text[:MAX_RESULT_CHARS]}", False)
    return ToolOutcome(answer.text[:MAX_RESULT_CHARS], True, variables=_response_variables(tool, answer.document))


_STEP = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def pick(document: Any, path: str) -> Any:
    """The value at ``path`` (``data.user.name``, ``items[0].id``, ``$.a.b``) in a JSON document; KeyError if
    there is none."""
    found = document
    for index, key in _STEP.findall(path.removeprefix("$").removeprefix(".")):
        if index:
            if not isinstance(found, list) or int(index) >= len(found):
                raise KeyError(path)
            found = found[int(index)]
        elif isinstance(found, dict) and key in found:
            found = found[key]
        else:
            raise KeyError(path)
    return found


def _as_variable(value: Any) -> str:
    """A JSON value as a dynamic variable (variables are strings): strings as they are, others as JSON."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _response_variables(tool: CustomTool | McpTool, body: bytes) -> dict[str, str]:
    """``response_variables`` picked out of a JSON response; a path the response lacks sets nothing."""
    if not tool.response_variables:
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        log.warning("tool response is not JSON; its response_variables are not set", extra={"tool": tool.name})
        return {}
    found = {}
    for name, path in tool.response_variables.items():
        try:
            found[name] = _as_variable(pick(document, path))
        except KeyError:
            log.info("tool response has no value at a response_variables path",
                     extra={"tool": tool.name, "variable": name, "path": path})
    return found


def _schema(variable: ExtractedVariable) -> dict[str, Any]:
    description = variable.description
    if variable.examples:
        description += " Examples: " + "; ".join(variable.examples)
    if variable.type == "enum":
        return {"type": "string", "enum": variable.choices, "description": description}
    return {"type": variable.type, "description": description}


def _extract(tool: ExtractDynamicVariableTool, args: dict[str, Any]) -> ToolOutcome:
    """The declared variables the model filled in, each checked against its type; the result says which
    were recorded and which were not."""
    found: dict[str, str] = {}
    problems: list[str] = []
    for variable in tool.variables:
        if variable.name not in args or args[variable.name] is None:
            if variable.required:
                problems.append(f"{variable.name} is required")
            continue
        value = args[variable.name]
        if variable.type == "boolean" and isinstance(value, bool):
            found[variable.name] = "true" if value else "false"
        elif variable.type == "number" and isinstance(value, int | float) and not isinstance(value, bool):
            whole = isinstance(value, float) and value.is_integer()
            found[variable.name] = str(int(value)) if whole else str(value)
        elif variable.type in ("enum", "string") and isinstance(value, str) and (
                variable.type == "string" or value in variable.choices):
            found[variable.name] = value
        else:
            expected = f"one of {', '.join(variable.choices)}" if variable.type == "enum" else f"a {variable.type}"
            problems.append(f"{variable.name} must be {expected}, not {orjson.dumps(value).decode()}")
    summary = ", ".join(f"{name}={value}" for name, value in found.items()) or "nothing"
    if problems:
        return ToolOutcome(f"Recorded {summary}. Not recorded: {'; '.join(problems)}.", False, variables=found)
    return ToolOutcome(f"Recorded {summary}.", True, variables=found)
