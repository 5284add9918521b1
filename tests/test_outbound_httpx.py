"""The outbound policy under the ``mcp`` SDK's HTTP client (httpx2): ``httpx_client`` checks every request's URL
and follows no redirect of its own, with the caller's time limit; ``PolicyBackend`` judges each connection
(a literal IP at once, a name after DNS) and never opens a Unix socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.errors import OutboundRefused
from service.outbound import ALLOW_SETTING, OutboundPolicy, PolicyBackend, httpx_client, policy_of

from .test_outbound import FakeResolver


class Site:
    def __init__(self) -> None:
        self.hits: list[str] = []
        self.port = 0
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        if request.path == "/moved":
            raise web.HTTPFound("/here")
        if request.path == "/slow":
            await self.release.wait()
        return web.Response(text="ok")


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    found = Site()
    app = web.Application()
    app.router.add_get("/{tail:.*}", found.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        found.port = server.port or 0
        yield found
        found.release.set()


async def test_a_request_the_policy_allows_goes_through(site: Site) -> None:
    async with OutboundPolicy(["127.0.0.1"]).session() as http, \
            httpx_client(http, headers={"X-Key": "k"}, timeout_s=5) as client:
        answer = await client.get(f"http://127.0.0.1:{site.port}/here")
    assert (answer.status_code, answer.text, site.hits) == (200, "ok", ["/here"])


async def test_each_url_is_checked_before_it_is_sent(site: Site) -> None:
    # Credentials in a URL: the connection itself would be allowed, the URL is not.
    async with OutboundPolicy(["127.0.0.1"]).session() as http, httpx_client(http, headers={}, timeout_s=5) as client:
        with pytest.raises(OutboundRefused, match="the URL carries credentials"):
            await client.get(f"http://user:secret@127.0.0.1:{site.port}/here")
    assert site.hits == []


async def test_no_redirect_is_followed_by_the_client(site: Site) -> None:
    async with OutboundPolicy(["127.0.0.1"]).session() as http, httpx_client(http, headers={}, timeout_s=5) as client:
        answer = await client.get(f"http://127.0.0.1:{site.port}/moved")
    assert (answer.status_code, answer.headers["location"], site.hits) == (302, "/here", ["/moved"])


async def test_the_callers_time_limit_holds(site: Site) -> None:
    async with OutboundPolicy(["127.0.0.1"]).session() as http, \
            httpx_client(http, headers={}, timeout_s=0.3) as client:
        async with asyncio.timeout(3):   # httpx2's own default would wait 5 s; none, for ever
            with pytest.raises(httpx2.TimeoutException):
                await client.get(f"http://127.0.0.1:{site.port}/slow")


async def test_a_proxy_from_the_environment_is_not_used(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")   # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with OutboundPolicy(["127.0.0.1"]).session() as http, httpx_client(http, headers={}, timeout_s=5) as client:
        answer = await client.get(f"http://127.0.0.1:{site.port}/here")
    assert answer.status_code == 200 and site.hits == ["/here"]


async def test_a_literal_address_is_judged_at_the_connection(site: Site) -> None:
    async with OutboundPolicy([]).session() as http:
        backend = PolicyBackend(policy_of(http))
        with pytest.raises(OutboundRefused) as refused:
            await backend.connect_tcp("127.0.0.1", site.port, timeout=2)
    assert str(refused.value) == (f"127.0.0.1 is not allowed: 127.0.0.1 is a loopback address. Parley calls no "
                                  f"internal address on a user's behalf unless {ALLOW_SETTING} lists it")
    assert site.hits == []


async def test_a_connection_the_policy_allows_keeps_the_callers_options(site: Site) -> None:
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    async with OutboundPolicy(["127.0.0.1"]).session() as http:
        backend = PolicyBackend(policy_of(http))
        stream = await backend.connect_tcp("127.0.0.1", site.port, timeout=2, local_address="127.0.0.1",
                                           socket_options=options)
        try:
            raw = stream.get_extra_info("socket")
            assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert raw.getsockname()[0] == "127.0.0.1" and raw.getpeername()[1] == site.port
        finally:
            await stream.aclose()


async def test_a_name_is_connected_to_the_address_dns_gave(site: Site) -> None:
    dns = FakeResolver({"crm.example.test": ["127.0.0.1"]})
    async with OutboundPolicy(["127.0.0.1"]).session(resolver=dns) as http:
        backend = PolicyBackend(policy_of(http))
        stream = await backend.connect_tcp("crm.example.test", site.port, timeout=2)
        try:
            assert stream.get_extra_info("socket").getpeername() == ("127.0.0.1", site.port)
        finally:
            await stream.aclose()
    async with OutboundPolicy([]).session(resolver=dns) as http:
        with pytest.raises(OutboundRefused, match="resolves only to addresses Parley may not call"):
            await PolicyBackend(policy_of(http)).connect_tcp("crm.example.test", site.port, timeout=2)


async def test_no_unix_socket_and_sleep_passes_through() -> None:
    async with OutboundPolicy([]).session() as http:
        backend = PolicyBackend(policy_of(http))
        with pytest.raises(OutboundRefused) as refused:
            await backend.connect_unix_socket("/run/docker.sock")
        assert str(refused.value) == "Parley does not connect to Unix sockets on a user's behalf"
        async with asyncio.timeout(2):
            await backend.sleep(0.01)
