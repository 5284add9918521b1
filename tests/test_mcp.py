"""MCP tools as Retell writes them: a Retell LLM's ``mcps`` servers and its ``mcp`` tools, run against a real MCP
server built with the official ``mcp`` SDK (streamable HTTP, on 127.0.0.1), end to end: a signed Twilio text, the
fake LLM calling the tool, the reply. Also the outbound policy on the MCP client's HTTP, failures as results, and
``GET /get-mcp-tools/{agent_id}`` through retell-sdk."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import uvicorn
from aiohttp import web
from aiohttp.test_utils import TestServer
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import ValidationError
from retell import APIStatusError, AsyncRetell

from service.agent import mcp
from service.app_state import RUNTIME
from service.catalog import targets
from service.errors import McpUnavailable, OutboundRefused
from service.outbound import OutboundPolicy
from service.retell.models import McpServer, RetellLLM
from service.retell.unsupported import unsupported

from .conftest import API_KEY, USER, MakeParley, Parley, agent_file, answered
from .test_outbound import FakeResolver
from .test_tool_types import NUMBERS, calls


@dataclass
class Seen:
    """What the MCP server was sent: each HTTP request's headers and query string."""

    headers: list[dict[str, str]] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    hang: asyncio.Event = field(default_factory=asyncio.Event)   # never set: the slow tool waits on it


@dataclass
class McpFixture:
    url: str
    port: int
    seen: Seen


def server(seen: Seen) -> MCPServer:
    built = MCPServer("crm")

    @built.tool()
    def lookup(phone: str) -> dict[str, Any]:
        """Look a customer up by phone number."""
        return {"customer": {"name": "Ana", "phone": phone, "visits": [{"day": "Friday"}]}}

    @built.tool()
    def broken() -> str:
        """Always fails."""
        raise ToolError("the CRM is down")

    @built.tool()
    async def slow() -> str:
        """Never answers."""
        await seen.hang.wait()
        return "late"

    return built


@pytest.fixture
async def mcp_server() -> AsyncIterator[McpFixture]:
    seen = Seen()
    # The server also answers as crm.example.test (the DNS test names it so): its Host check allows that name.
    security = TransportSecuritySettings(allowed_hosts=["127.0.0.1:*", "crm.example.test:*"])
    app = server(seen).streamable_http_app(transport_security=security)

    async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
            seen.queries.append(scope["query_string"].decode())
        await app(scope, receive, send)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()   # connections wait in the backlog until uvicorn has started: nothing to wait for here
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(recording, log_level="warning", lifespan="on"))
    task = asyncio.create_task(uv.serve(sockets=[sock]))
    yield McpFixture(f"http://127.0.0.1:{port}/mcp", port, seen)
    seen.hang.set()
    uv.should_exit = True
    await task


def agent(url: str, *tools: dict[str, Any], **server_fields: Any) -> dict[str, Any]:
    crm = {"name": "crm", "url": url, "timeout_ms": 5000, **server_fields}
    return agent_file(retell_llm={"mcps": [crm], "general_tools": list(tools),
                                  "default_dynamic_variables": {"account": "acme 7"}})


LOOKUP = {"type": "mcp", "name": "lookup", "description": "Look the customer up.", "mcp_id": "crm",
          "input_schema": {"type": "object", "properties": {"phone": {"type": "string"}}, "required": ["phone"]},
          "response_variables": {"customer_name": "customer.name", "next_visit": "customer.visits[0].day"}}


async def test_an_mcp_tool_runs_end_to_end(make_parley: MakeParley, mcp_server: McpFixture) -> None:
    parley = await make_parley(numbers=NUMBERS, agent=agent(
        mcp_server.url, LOOKUP, headers={"X-Account": "{{account}}"}, query_params={"caller": "{{user_number}}"}))
    parley.llm.respond = calls(("lookup", {"phone": USER}))
    reply = await answered(parley, "when is my visit?")
    # The model was offered the tool with its input_schema, and read the server's answer.
    offered = parley.llm.requests[0]["tools"]
    assert {"type": "function", "function": {"name": "lookup", "description": "Look the customer up.",
                                             "parameters": LOOKUP["input_schema"]}} in offered
    assert reply.startswith("Tool said: ") and '"name": "Ana"' in reply
    # Every request to the server carried the rendered header and query parameter.
    assert mcp_server.seen.headers and all(h["x-account"] == "acme 7" for h in mcp_server.seen.headers)
    assert all(q == f"caller=%2B{USER[1:]}" for q in mcp_server.seen.queries)
    chat = await parley.chat_of()
    invocation, result = [m for m in chat["message_with_tool_calls"] if m["role"].startswith("tool_call")]
    assert invocation["type"] == "mcp" and invocation["name"] == "lookup"
    assert result["successful"] is True and '"Ana"' in result["content"]
    assert chat["collected_dynamic_variables"] == {"customer_name": "Ana", "next_visit": "Friday"}


async def test_failures_are_results_the_model_reads(make_parley: MakeParley, mcp_server: McpFixture) -> None:
    broken = {"type": "mcp", "name": "broken", "description": "Fails.", "mcp_id": "crm"}
    slow = {"type": "mcp", "name": "slow", "description": "Hangs.", "mcp_id": "crm"}
    parley = await make_parley(numbers=NUMBERS, agent=agent(mcp_server.url, broken, slow, timeout_ms=3000))
    parley.llm.respond = calls(("broken", {}))
    assert await answered(parley, "one") == "Tool said: The tool failed: Error executing tool broken: the CRM is down"
    parley.llm.respond = calls(("slow", {}))
    assert await answered(parley, "two") == \
        "Tool said: The tool could not run: the MCP server crm did not answer within 3000 ms."
    results = [m for m in (await parley.chat_of())["message_with_tool_calls"] if m["role"] == "tool_call_result"]
    assert [r["successful"] for r in results] == [False, False]


async def test_a_server_that_cannot_be_reached_is_a_result(make_parley: MakeParley) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))   # bound, never listening: connections are refused
    parley = await make_parley(numbers=NUMBERS, agent=agent(f"http://127.0.0.1:{closed.getsockname()[1]}/mcp", LOOKUP))
    parley.llm.respond = calls(("lookup", {"phone": USER}))
    assert (await answered(parley, "hi")).startswith("Tool said: The tool could not run: the MCP server crm failed: ")
    closed.close()


async def test_the_outbound_policy_stands_between_the_model_and_the_server(
    make_parley: MakeParley, mcp_server: McpFixture,
) -> None:
    parley = await make_parley(numbers=NUMBERS, outbound_allow=[], catalog_cache_ms=0)
    # Loading (and the API) refuses such a server: put it straight into Redis, as a new LLM version and an agent
    # version that names it.
    catalog = parley.client.app[RUNTIME].catalog
    current = await catalog.llms.get("llm_frontdesk")
    llm = await catalog.llms.append(RetellLLM.model_validate({**current.model_dump(), "general_tools": [LOOKUP],
                                                              "mcps": [{"name": "crm", "url": mcp_server.url}]}),
                                    published=True)
    agent = await catalog.agents.get("frontdesk")
    assert agent.response_engine is not None
    await catalog.agents.append(agent.model_copy(update={
        "response_engine": agent.response_engine.model_copy(update={"version": llm.version})}), published=True)
    parley.llm.respond = calls(("lookup", {"phone": USER}))
    reply = await answered(parley, "hi")
    assert reply.startswith("Tool said: The MCP server's URL is not allowed: http://127.0.0.1:")
    assert "a loopback address" in reply
    assert mcp_server.seen.headers == []


async def test_the_mcp_clients_connections_are_judged_after_dns(mcp_server: McpFixture) -> None:
    """A name that resolves to a forbidden address is refused before any connection; allowed, it works."""
    crm = McpServer(name="crm", url=f"http://crm.example.test:{mcp_server.port}/mcp", timeout_ms=5000)
    dns = FakeResolver({"crm.example.test": ["127.0.0.1"]})
    async with OutboundPolicy([]).session(resolver=dns) as http:
        with pytest.raises(OutboundRefused, match="resolves only to addresses Parley may not call"):
            await mcp.list_tools(http, crm, {})
    assert mcp_server.seen.headers == []
    async with OutboundPolicy(["127.0.0.1"]).session(resolver=dns) as http:
        assert [t.name for t in await mcp.list_tools(http, crm, {})] == ["lookup", "broken", "slow"]


async def test_a_redirect_away_from_the_server_is_not_followed(mcp_server: McpFixture) -> None:
    """The MCP SDK follows a redirect only within the server's origin: one to another address fails the call."""
    hits: list[str] = []

    async def bounce(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPTemporaryRedirect(mcp_server.url)   # another origin (another port)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", bounce)
    async with TestServer(app) as front, OutboundPolicy(["127.0.0.1"]).session() as http:
        crm = McpServer(name="crm", url=str(front.make_url("/mcp")), timeout_ms=5000)
        with pytest.raises(McpUnavailable, match="the MCP server crm failed"):
            await mcp.list_tools(http, crm, {})
    assert hits and mcp_server.seen.headers == []


def test_servers_are_checked_when_written() -> None:
    llm = RetellLLM.model_validate({"mcps": [{"name": "crm", "url": "http://10.0.0.9/mcp",
                                              "headers": {"X-Key": "a\r\nb"}}], "general_tools": [LOOKUP]})
    problems = targets.llm_problems(llm, OutboundPolicy([]))
    assert problems[0].startswith("mcps.0.url (server 'crm'): http://10.0.0.9 is not allowed: 10.0.0.9 is a private")
    assert problems[1].startswith("mcps.0.headers (server 'crm', header 'X-Key'): the value contains a line break")


def test_an_mcp_tool_must_name_a_server() -> None:
    with pytest.raises(ValidationError, match=r"general_tools.0.mcp_id \(tool 'lookup'\): no server in mcps is "
                                              r"named 'crm' \(mcps: billing\)"):
        RetellLLM.model_validate({"mcps": [{"name": "billing", "url": "https://b.example.com/mcp"}],
                                  "general_tools": [LOOKUP]})
    # Without mcp_id, the only server is meant; an export's server id is accepted too.
    one = RetellLLM.model_validate({"mcps": [{"name": "crm", "url": "https://c.example.com/mcp", "id": "mcp_9"}],
                                    "general_tools": [{**LOOKUP, "mcp_id": None}, {**LOOKUP, "name": "again",
                                                                                    "mcp_id": "mcp_9"}]})
    assert unsupported(one) == []   # mcp tools and servers run: nothing is reported


async def test_get_mcp_tools_through_the_sdk(make_parley: MakeParley, mcp_server: McpFixture) -> None:
    parley: Parley = await make_parley(numbers=NUMBERS, agent=agent(mcp_server.url, LOOKUP))
    client = AsyncRetell(api_key=API_KEY, base_url=str(parley.client.make_url("")).rstrip("/"), max_retries=0)
    async with client:
        tools = await client.mcp_tool.get_mcp_tools("frontdesk", mcp_id="crm")
        assert [(t.name, t.description) for t in tools] == [
            ("lookup", "Look a customer up by phone number."), ("broken", "Always fails."), ("slow", "Never answers.")]
        assert cast(dict[str, Any], tools[0].input_schema)["required"] == ["phone"]
        with pytest.raises(APIStatusError) as missing:
            await client.mcp_tool.get_mcp_tools("frontdesk", mcp_id="billing")
        assert missing.value.status_code == 404 and "no MCP server 'billing'" in missing.value.message


async def test_get_mcp_tools_of_a_flow_component(make_parley: MakeParley, mcp_server: McpFixture) -> None:
    crm: Any = {"name": "crm", "url": mcp_server.url, "timeout_ms": 5000}
    ask: Any = {"id": "ask", "type": "conversation", "instruction": {"type": "prompt", "text": "Ask."}}
    run = {"id": "run", "type": "component", "component_id": "Lookup", "component_type": "local"}
    flow = {"nodes": [run], "components": [{"name": "Lookup", "nodes": [ask], "mcps": [crm]}]}
    desk = {k: v for k, v in agent_file().items() if k != "retell_llm"}
    parley: Parley = await make_parley(numbers=NUMBERS, agent={**desk, "conversation_flow": flow})
    client = AsyncRetell(api_key=API_KEY, base_url=str(parley.client.make_url("")).rstrip("/"), max_retries=0)
    async with client:
        local = await client.mcp_tool.get_mcp_tools("frontdesk", mcp_id="crm", component_id="Lookup")
        assert [t.name for t in local] == ["lookup", "broken", "slow"]
        shared = await client.conversation_flow_component.create(name="Shared lookup", nodes=[ask], mcps=[crm])
        found = await client.mcp_tool.get_mcp_tools("frontdesk", mcp_id="crm",
                                                    component_id=shared.conversation_flow_component_id)
        assert [t.name for t in found] == ["lookup", "broken", "slow"]
        with pytest.raises(APIStatusError) as missing:
            await client.mcp_tool.get_mcp_tools("frontdesk", mcp_id="crm")   # the flow itself has no mcps
        assert missing.value.status_code == 404 and "agent 'frontdesk' has no MCP server 'crm' (mcps: none)" in \
            missing.value.message
        with pytest.raises(APIStatusError) as unknown:
            await client.mcp_tool.get_mcp_tools("frontdesk", mcp_id="crm", component_id="component_gone")
        assert unknown.value.status_code == 404 and "component 'component_gone' not found" in unknown.value.message
