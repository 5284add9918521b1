"""What a conversation flow's acting nodes do when the walk (``flow.FlowTurn``) enters them, then where they lead.

- **function**: the model writes the arguments of the flow's tool ``tool_id`` (one call that must call it; none
  when the tool takes no parameters), ``tools.run`` runs it (a custom tool), the call is recorded as Retell records
  a tool call, its ``response_variables`` become the chat's; then the node routes on the result (equations over
  the new values, then its prompt edges judged by the model with the result in view, else ``else_edge``). With
  ``wait_for_result`` false it still runs (a chat has no "meanwhile") but the node does not route on the result:
  it takes its else edge (else its first edge). An ``instruction`` with ``speak_during_execution`` is said first.
- **mcp**: the same with the tool ``mcp_tool_name`` of the flow's MCP server ``mcp_id`` (its schema as the server
  lists it) and the node's ``response_variables``.
- **extract_dynamic_variables**: the model fills the node's ``variables`` (an ``extract_dynamic_variable`` tool),
  which become the chat's; then the node routes.
- **sms**: sends its text (``static_text`` or the template as written, a ``prompt``'s text written by the model)
  through the turn's ``SmsHook`` like the ``send_sms`` tool (same checks; an API chat has no phone number), then
  takes ``success_edge`` or ``failed_edge``.
- **agent_swap**: says its instruction, hands the chat to the agent (``swap``), whose engine answers the rest of
  the turn; when the swap cannot be made, ``edge``.
- **component**: enters the component at its start node (paths ``<component node>/<inner node>``).
- **branch**: routes at once.
- voice-only nodes and ``code``, a shared tool or an integration app: Parley cannot run them. The node's else
  edge (or ``edge``) is taken, the transition saying why; without one the chat ends with the fallback message,
  recorded. Logged either way.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import orjson

from service.agent import mcp, tools
from service.agent.flow_place import Target, child, parent
from service.agent.llm import ToolCall
from service.agent.reply import ms
from service.chats.model import Message, Role, new_id
from service.errors import McpUnavailable, NotFound, OutboundRefused
from service.retell.flows import (
    AgentSwapNode,
    BranchNode,
    ComponentNode,
    ExtractNode,
    FlowTool,
    FunctionNode,
    McpNode,
    Node,
    SmsNode,
    UnsupportedNode,
    _Graph,
)
from service.retell.models import AgentSwapTool, ExtractDynamicVariableTool, McpTool, SendSmsTool, SmsContent

if TYPE_CHECKING:
    from service.agent.flow import FlowTurn

log = logging.getLogger(__name__)


async def act(turn: FlowTurn, path: str, node: Node) -> None:
    """Do what ``node`` does, then leave it by the way that says."""
    if isinstance(node, BranchNode):
        await turn.route(path, node)
    elif isinstance(node, FunctionNode | McpNode | ExtractNode):
        await _call(turn, path, node)
    elif isinstance(node, SmsNode):
        await _sms(turn, path, node)
    elif isinstance(node, AgentSwapNode):
        await _swap(turn, path, node)
    elif isinstance(node, ComponentNode):
        await _component(turn, path, node)
    elif isinstance(node, UnsupportedNode):
        await cannot(turn, path, node, node.why)
    else:   # conversation and end nodes are the walk's own
        raise TypeError(f"not an acting node: {node.type}")


async def cannot(turn: FlowTurn, path: str, node: Node, why: str) -> None:
    """``node`` cannot run in Parley: its else edge (or ``edge``) says why; without one the chat ends."""
    edge = getattr(node, "else_edge", None) or getattr(node, "edge", None)
    log.warning("conversation flow node cannot run", extra={"chat_id": turn.chat.chat_id, "node": path, "why": why})
    if edge is not None:
        return await turn.go(Target("normal", edge), why=f"{why}; took its {edge.id} edge")
    turn.reply.messages.append(Message(
        Role.NODE_TRANSITION, content=f"{why}; the node has no else edge, so the chat ended", former_node_id=path,
        former_node_name=node.label, transition_type="normal", created_timestamp=ms(turn.now)))
    turn.say(turn.agent.config.fallback_message)
    turn.reply.end_chat = True
    return None


async def _call(turn: FlowTurn, path: str, node: FunctionNode | McpNode | ExtractNode) -> None:
    graph = await turn.graph(parent(path))
    if isinstance(node, ExtractNode):
        offered: tools.Offered | str = ExtractDynamicVariableTool(
            type="extract_dynamic_variable", name="extract_dynamic_variables", variables=node.variables,
            description="Record the values the conversation gives for these variables.")
    elif isinstance(node, McpNode):
        offered = await _mcp_tool(turn, graph, node)
    else:
        offered = _function_tool(graph, node)
    if isinstance(offered, str):
        return await cannot(turn, path, node, offered)
    if not isinstance(node, ExtractNode) and node.speak_during_execution and node.instruction is not None:
        turn.say(await turn.instruction_text(node, node.instruction))
    call = await _arguments(turn, node, offered)
    result = await turn.run_tool([offered], call)
    turn.heard(call, result.content)
    if isinstance(node, ExtractNode) or node.wait_for_result:
        return await turn.route(path, node)
    edge = node.else_edge or (node.edges[0] if node.edges else None)   # not waiting: the result does not route
    return await turn.go(Target("normal", edge)) if edge is not None else None


def _function_tool(graph: _Graph, node: FunctionNode) -> tools.Offered | str:
    """The tool a function node calls, or why Parley cannot call it."""
    if node.tool_type == "shared":
        return f"shared tool {node.tool_id!r}: tools shared across Retell flows are not kept by Parley"
    tool = graph.tool(node.tool_id)
    if isinstance(tool, FlowTool):
        return tool
    if tool is None:
        return f"no tool in the flow's tools has the id {node.tool_id!r}"
    return f"tool {node.tool_id!r} is an integration_app tool, which Parley does not run"


async def _mcp_tool(turn: FlowTurn, graph: _Graph, node: McpNode) -> tools.Offered | str:
    """The MCP node's tool with its server, described as the server lists it."""
    server = graph.mcp_server(node.mcp_id)
    if server is None:
        return f"no MCP server in the flow's mcps is named {node.mcp_id!r}"
    description, schema = "", None
    try:
        listed = await mcp.list_tools(turn.parts.http, server, turn.values())
        found = next((t for t in listed if t.name == node.mcp_tool_name), None)
        if found is not None:
            description, schema = found.description, found.input_schema
    except (McpUnavailable, OutboundRefused) as exc:   # the call says so too, as its result
        log.warning("mcp server did not list its tools", extra={"server": server.name, "error": str(exc)})
    tool = McpTool.model_construct(type="mcp", name=node.mcp_tool_name, description=description,
                                   mcp_id=node.mcp_id, input_schema=schema,
                                   response_variables=dict(node.response_variables))
    return tools.ServerTool(tool, server)


async def _arguments(turn: FlowTurn, node: Node, tool: tools.Offered) -> ToolCall:
    """The call of ``tool`` with the arguments the model writes (none asked when it takes none)."""
    definition = tools.definitions([tool])[0]
    name = definition["function"]["name"]
    if not definition["function"]["parameters"].get("properties"):
        return ToolCall(new_id("call_"), name, "{}")
    task = f"Call the tool {name} now, with the arguments the conversation gives. Do not write a reply."
    completion = await turn.complete(node, turn.messages(turn.prompt(node, task)), [definition], require=name)
    found = next((c for c in completion.tool_calls if c.name == name), None)
    if found is None:
        log.warning("the model did not call the node's tool; calling it without arguments", extra={
            "chat_id": turn.chat.chat_id, "tool": name})
    return found or ToolCall(new_id("call_"), name, "{}")


async def _sms(turn: FlowTurn, path: str, node: SmsNode) -> None:
    instruction = node.instruction
    arguments: dict[str, str] = {}
    if instruction.predefined is not None:
        content = SmsContent(type="predefined", text=instruction.predefined)
    else:
        content = SmsContent(type="inferred", prompt=instruction.text)
        task = ("Write the text message to send now, following this instruction: "
                f"{instruction.text}\nAnswer with the message only.")
        completion = await turn.complete(node, turn.messages(turn.prompt(node, task)), [])
        arguments["content"] = completion.content.strip()
    tool = SendSmsTool(type="send_sms", name="send_sms", description="Send a text message.", sms_content=content,
                       sms_destination=node.sms_destination, sms_sender=node.sms_sender)
    result = await turn.run_tool([tool], ToolCall(new_id("call_"), tool.name, orjson.dumps(arguments).decode()))
    await turn.go(Target("normal", node.success_edge if result.successful else node.failed_edge))


async def _swap(turn: FlowTurn, path: str, node: AgentSwapNode) -> None:
    if node.instruction is not None:
        turn.say(await turn.instruction_text(node, node.instruction))
    tool = AgentSwapTool.model_construct(type="agent_swap", name="agent_swap", agent_id=node.agent_id,
                                         agent_version=node.agent_version,
                                         post_call_analysis_setting=node.post_call_analysis_setting)
    arguments = orjson.dumps({"agent_id": node.agent_id, "agent_version": node.agent_version}).decode()
    await turn.swap_to(ToolCall(new_id("call_"), tool.name, arguments), tool, [tool])
    if node.edge is not None:   # not swapped (the result says why)
        await turn.go(Target("normal", node.edge))


async def _component(turn: FlowTurn, path: str, node: ComponentNode) -> None:
    try:
        start = (await turn.graph(path)).start
    except NotFound as exc:
        return await cannot(turn, path, node, f"component {node.component_id!r}: {exc}")
    if start is None:   # an empty component: straight out again
        return await turn.route(path, node)
    return await turn.step_in(path, child(path, start.id))
