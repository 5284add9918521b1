"""Where agents, Retell LLMs, conversation flows and numbers send requests, checked when they are written
(files and the API).

A URL written once and called later on a user's behalf (a custom tool's ``url``, an agent's ``webhook_url``,
a number's ``inbound_sms_webhook_url``) is checked here against the outbound policy without DNS
(``OutboundPolicy.check_url``): a host may not resolve from the machine that checks the files, and the
policy's resolver judges the addresses at run time anyway. A tool URL with ``{{variables}}`` is checked only
at run time, once rendered. A custom tool's headers are checked too: a header aiohttp cannot send would fail
every call. So are a Retell LLM's MCP servers (``mcps``): their URLs and headers. A conversation flow's and a
shared component's are checked the same way: their ``tools``, subagent nodes' ``tools``, ``mcps``, and those of a
flow's local ``components``.

Each function returns the problems as ``<field path>: <what is wrong>`` lines; the file loader prefixes the
file, the API joins them into a 422.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.errors import OutboundRefused
from service.outbound import OutboundPolicy, header_problem
from service.retell.flows import Component, ConversationFlow, SubagentNode
from service.retell.models import ChatAgent, CustomTool, McpServer, PhoneNumber, RetellLLM


def _url_problem(policy: OutboundPolicy, field: str, url: str | None) -> list[str]:
    if not url:
        return []
    try:
        policy.check_url(url)
    except OutboundRefused as exc:
        return [f"{field}: {exc}"]
    return []


def _servers(policy: OutboundPolicy, servers: list[McpServer], where: str) -> list[str]:
    """Each MCP server's URL and headers; ``where``: the field that lists them."""
    problems: list[str] = []
    for index, server in enumerate(servers):
        problems += _url_problem(policy, f"{where}.{index}.url (server {server.name!r})", server.url)
        for name, value in server.headers.items():
            if (problem := header_problem(name, value)) is not None:
                problems.append(f"{where}.{index}.headers (server {server.name!r}, header {name!r}): {problem}")
    return problems


def _tools(policy: OutboundPolicy, tools: Sequence[object], where: str) -> list[str]:
    """Each custom tool's URL (unless it holds ``{{variables}}``) and headers; ``where``: the field listing them."""
    problems: list[str] = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, CustomTool):
            continue
        if "{{" not in tool.url:
            problems += _url_problem(policy, f"{where}.{index}.url (tool {tool.name!r})", tool.url)
        for name, value in tool.headers.items():
            if (problem := header_problem(name, value)) is not None:
                problems.append(f"{where}.{index}.headers (tool {tool.name!r}, header {name!r}): {problem}")
    return problems


def llm_problems(llm: RetellLLM, policy: OutboundPolicy, *, prefix: str = "") -> list[str]:
    """Each custom tool's URL (unless it holds ``{{variables}}``) and headers; each MCP server's."""
    return _servers(policy, llm.mcps, f"{prefix}mcps") + _tools(policy, llm.general_tools, f"{prefix}general_tools")


def graph_problems(graph: ConversationFlow | Component, policy: OutboundPolicy, *, prefix: str = "") -> list[str]:
    """A conversation flow's or a component's tools, its subagent nodes' own tools and its MCP servers, checked as
    a Retell LLM's; a flow's local components too."""
    problems = _servers(policy, graph.mcps, f"{prefix}mcps") + _tools(policy, graph.tools, f"{prefix}tools")
    for index, node in enumerate(graph.nodes):
        if isinstance(node, SubagentNode):
            problems += _tools(policy, node.tools, f"{prefix}nodes.{index} ({node.id}).tools")
    for index, component in enumerate(getattr(graph, "components", None) or []):
        problems += graph_problems(component, policy, prefix=f"{prefix}components.{index} ({component.name}).")
    return problems


def agent_problems(agent: ChatAgent, policy: OutboundPolicy) -> list[str]:
    """The agent's ``webhook_url``, and its inline Retell LLM's or conversation flow's (agent files carry one)."""
    problems = _url_problem(policy, "webhook_url", agent.webhook_url)
    if agent.retell_llm is not None:
        problems += llm_problems(agent.retell_llm, policy, prefix="retell_llm.")
    if agent.conversation_flow is not None:
        problems += graph_problems(agent.conversation_flow, policy, prefix="conversation_flow.")
    return problems


def number_problems(number: PhoneNumber, policy: OutboundPolicy, *, prefix: str = "") -> list[str]:
    """The number's ``inbound_sms_webhook_url``."""
    return _url_problem(policy, f"{prefix}inbound_sms_webhook_url", number.inbound_sms_webhook_url)
