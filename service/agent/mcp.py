"""MCP servers (a Retell LLM's ``mcps``) and their tools, through the official ``mcp`` SDK's streamable-HTTP client.

Each call opens a session, makes its request and closes it: Parley keeps no connection to an MCP server between
turns (any process may run the next one). The server's ``headers`` and ``query_params`` have their
``{{variables}}`` rendered (query values are added to the URL, percent-encoded), and ``timeout_ms`` bounds the
whole of it: connecting, the handshake and the request.

Every request goes through the outbound policy (``service.outbound.httpx_client``): the URL is checked before the
session opens and before each HTTP request, and connections go only to addresses the policy allows, after DNS.
The SDK follows a redirect only within the server's origin; one elsewhere fails the call.

Failures are translated here: a timeout, an HTTP or transport error and an error the server answers become
``McpUnavailable``; a URL the policy refuses stays ``OutboundRefused``. A tool that runs and reports an error
(``isError``) is not a failure of the server: it is an answer whose ``ok`` is false.

The SDK is imported when a server is first reached, not with this module: it costs every process about 26 MB of
memory and 0.4 s of start-up, which agents without MCP servers never need.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import anyio
import httpx2
import orjson
from yarl import URL

from service.agent.variables import render
from service.errors import McpUnavailable, OutboundRefused
from service.outbound import header_problem, httpx_client, policy_of
from service.retell.models import McpServer

if TYPE_CHECKING:
    from mcp import Client
    from mcp_types import CallToolResult

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class McpAnswer:
    """A tool's answer: its text (text blocks joined; the structured content as JSON when there is no text),
    the JSON ``response_variables`` are picked from, and whether the tool reported success."""

    text: str
    document: bytes
    ok: bool


@dataclass(frozen=True, slots=True)
class McpToolInfo:
    """A tool as the server lists it (Retell's ``McpToolDefinition``)."""

    name: str
    description: str
    input_schema: dict[str, Any]


async def list_tools(http: aiohttp.ClientSession, server: McpServer, values: dict[str, str]) -> list[McpToolInfo]:
    """Every tool the server lists (all pages)."""
    async def run(client: Client) -> list[McpToolInfo]:
        found: list[McpToolInfo] = []
        cursor: str | None = None
        while True:
            page = await client.list_tools(cursor=cursor)
            found += [McpToolInfo(t.name, t.description or "", dict(t.input_schema)) for t in page.tools]
            cursor = page.next_cursor
            if not cursor:
                return found
    return await _session(http, server, values, run)


async def call_tool(http: aiohttp.ClientSession, server: McpServer, name: str, arguments: dict[str, Any],
                    values: dict[str, str]) -> McpAnswer:
    """Call the server's tool ``name`` with ``arguments``."""
    async def run(client: Client) -> McpAnswer:
        return _answer(await client.call_tool(name, arguments))
    return await _session(http, server, values, run)


def _answer(result: CallToolResult) -> McpAnswer:
    from mcp_types import TextContent
    texts = [block.text if isinstance(block, TextContent) else f"[{block.type} content]" for block in result.content]
    structured = orjson.dumps(result.structured_content) if result.structured_content is not None else None
    text = "\n".join(texts) if texts else (structured or b"").decode()
    return McpAnswer(text=text, document=structured or text.encode(), ok=not result.is_error)


def server_url(server: McpServer, values: dict[str, str]) -> URL:
    """The server's URL with its ``query_params`` rendered and added."""
    url = URL(server.url)
    if server.query_params:
        url = url.update_query({name: render(value, values) for name, value in server.query_params.items()})
    return url


async def _session(http: aiohttp.ClientSession, server: McpServer, values: dict[str, str],
                   run: Callable[[Client], Awaitable[T]]) -> T:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    timeout_s = server.timeout_ms / 1000
    url = policy_of(http).policy.check_url(server_url(server, values))
    headers = {}
    for name, template in server.headers.items():
        headers[name] = value = render(template, values)
        if (problem := header_problem(name, value)) is not None:
            raise McpUnavailable(f"the MCP server {server.name}'s header {name} could not be sent: {problem}")
    try:
        with anyio.fail_after(timeout_s):
            async with (httpx_client(http, headers=headers, timeout_s=timeout_s) as client,
                        Client(streamable_http_client(str(url), http_client=client), cache=None) as session):
                return await run(session)
    except TimeoutError:
        raise McpUnavailable(f"the MCP server {server.name} did not answer within {server.timeout_ms} ms") from None
    except Exception as exc:   # the SDK runs in task groups: its errors may come wrapped in exception groups
        raise _translated(server, exc) from exc


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _translated(server: McpServer, exc: Exception) -> Exception:
    """Parley's error for what the SDK raised: the policy's refusal as it is, the rest as ``McpUnavailable``;
    anything else (a bug) unchanged."""
    from mcp.shared.exceptions import MCPError

    chain = [cause for leaf in _leaves(exc) for cause in (leaf, leaf.__cause__, leaf.__context__) if cause]
    refused = next((c for c in chain if isinstance(c, OutboundRefused)), None)
    if refused is not None:
        return refused
    if any(isinstance(c, TimeoutError) for c in chain):
        return McpUnavailable(f"the MCP server {server.name} did not answer within {server.timeout_ms} ms")
    known = next((c for c in chain if isinstance(c, MCPError | httpx2.HTTPError | OSError)), None)
    if known is None:
        return exc
    why = f"{known.error.message}" if isinstance(known, MCPError) else known.__class__.__name__
    if isinstance(known, httpx2.HTTPStatusError):
        why = f"HTTP {known.response.status_code}"
    log.warning("mcp server failed", extra={"server": server.name, "error": why})
    return McpUnavailable(f"the MCP server {server.name} failed: {why}")
