"""Where agents, Retell LLMs and numbers send requests, checked when they are written (files and the API).

A URL written once and called later on a user's behalf (a custom tool's ``url``, an agent's ``webhook_url``,
a number's ``inbound_sms_webhook_url``) is checked here against the outbound policy without DNS
(``OutboundPolicy.check_url``): a host may not resolve from the machine that checks the files, and the
policy's resolver judges the addresses at run time anyway. A tool URL with ``{{variables}}`` is checked only
at run time, once rendered. A custom tool's headers are checked too: a header aiohttp cannot send would fail
every call. So are a Retell LLM's MCP servers (``mcps``): their URLs and headers.

Each function returns the problems as ``<field path>: <what is wrong>`` lines; the file loader prefixes the
file, the API joins them into a 422.
"""

from __future__ import annotations

from service.errors import OutboundRefused
from service.outbound import OutboundPolicy, header_problem
from service.retell.models import ChatAgent, CustomTool, PhoneNumber, RetellLLM


def _url_problem(policy: OutboundPolicy, field: str, url: str | None) -> list[str]:
    if not url:
        return []
    try:
        policy.check_url(url)
    except OutboundRefused as exc:
        return [f"{field}: {exc}"]
    return []


def llm_problems(llm: RetellLLM, policy: OutboundPolicy, *, prefix: str = "") -> list[str]:
    """Each custom tool's URL (unless it holds ``{{variables}}``) and headers; each MCP server's."""
    problems: list[str] = []
    for index, server in enumerate(llm.mcps):
        where = f"{prefix}mcps.{index}"
        problems += _url_problem(policy, f"{where}.url (server {server.name!r})", server.url)
        for name, value in server.headers.items():
            if (problem := header_problem(name, value)) is not None:
                problems.append(f"{where}.headers (server {server.name!r}, header {name!r}): {problem}")
    for index, tool in enumerate(llm.general_tools):
        if not isinstance(tool, CustomTool):
            continue
        where = f"{prefix}general_tools.{index}"
        if "{{" not in tool.url:
            problems += _url_problem(policy, f"{where}.url (tool {tool.name!r})", tool.url)
        for name, value in tool.headers.items():
            problem = header_problem(name, value)
            if problem is not None:
                problems.append(f"{where}.headers (tool {tool.name!r}, header {name!r}): {problem}")
    return problems


def agent_problems(agent: ChatAgent, policy: OutboundPolicy) -> list[str]:
    """The agent's ``webhook_url``, and its inline Retell LLM's tools (agent files carry one)."""
    problems = _url_problem(policy, "webhook_url", agent.webhook_url)
    if agent.retell_llm is not None:
        problems += llm_problems(agent.retell_llm, policy, prefix="retell_llm.")
    return problems


def number_problems(number: PhoneNumber, policy: OutboundPolicy, *, prefix: str = "") -> list[str]:
    """The number's ``inbound_sms_webhook_url``."""
    return _url_problem(policy, f"{prefix}inbound_sms_webhook_url", number.inbound_sms_webhook_url)
