"""The outbound policy: what Parley may call on a user's behalf (tools, events, chat_inbound), checked where a
URL is written, after DNS, on every redirect; and tool headers that cannot break a turn.

The business's servers here are local aiohttp servers on 127.0.0.1, which the policy refuses unless
``PARLEY_OUTBOUND_ALLOW`` lists them. DNS answers come from ``FakeResolver``, given to the policy's session
through aiohttp's resolver interface.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from pydantic import ValidationError
from yarl import URL

from service.app_state import RUNTIME
from service.catalog import agent_files
from service.errors import ConfigError, OutboundRefused
from service.outbound import (
    MAX_REDIRECTS,
    OutboundPolicy,
    PolicyConnector,
    PolicyResolver,
    fetch,
    forbidden,
    header_problem,
)
from service.retell.models import RetellLLM
from service.settings import Settings
from service.storage import keys
from service.webhooks.events import Event

from .conftest import AGENT_NUMBER, DEFAULT_NUMBERS, MakeParley, agent_file, build_settings, write_agents
from .fakes.openai import FakeOpenAI
from .fakes.twilio import FakeTwilio
from .test_tools import call_then_answer, tool

ALLOW_SETTING = "PARLEY_OUTBOUND_ALLOW"


class FakeResolver(AbstractResolver):
    """DNS answers from a table: host name -> addresses."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if host not in self.answers:
            raise OSError(socket.EAI_NONAME, f"{host} does not resolve")
        return [{"hostname": host, "host": address, "port": port,
                 "family": socket.AF_INET6 if ":" in address else socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST} for address in self.answers[host]]

    async def close(self) -> None:
        pass


@dataclass
class Business:
    """A business's server on 127.0.0.1: records every path it is asked for."""

    port: int = 0
    hits: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    never: asyncio.Event = field(default_factory=asyncio.Event)   # never set: /slow waits on it
    arrived: asyncio.Event = field(default_factory=asyncio.Event)   # set by every request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        self.headers.append(dict(request.headers))
        self.arrived.set()
        path = request.path
        if path == "/to-loopback":   # to the literal address of this very server
            raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{self.port}/secret")
        if path == "/to-metadata":
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data/iam/")
        if path == "/away":
            raise web.HTTPFound(request.query["to"])
        if path.startswith("/hop/"):
            n = int(path.removeprefix("/hop/"))
            if n < MAX_REDIRECTS + 1:
                raise web.HTTPFound(f"/hop/{n + 1}")
            return web.Response(text="arrived")
        if path == "/big":
            return web.Response(body=b"x" * 1_000_000)
        if path == "/slow":
            await self.never.wait()
        if path == "/html":
            return web.Response(text="<html>SECRET-METADATA-TOKEN</html>", content_type="text/html")
        if path == "/typed-wrong":
            return web.json_response({"chat_inbound": {"override_agent_version": "SECRET-VALUE"}})
        if path == "/book":
            return web.json_response({"confirmation": "BK-7", "query": dict(request.query)})
        if (answer := await self.scripted(request)) is not None:
            return answer
        return web.json_response({"path": path, "headers": dict(request.headers)})

    @staticmethod
    async def scripted(request: web.Request) -> web.StreamResponse | None:
        """``/status/<code>?location=...``: that status, with that Location; ``/echo``: the method, body and query;
        ``/drip``: 10 bytes, then 1,000 more a moment later; ``/slow-hop/<n>``: a redirect to the next after 0.2 s,
        up to 2."""
        path = request.path
        if path == "/drip":
            stream = web.StreamResponse()
            await stream.prepare(request)
            await stream.write(b"a" * 10)
            await asyncio.sleep(0.05)   # the server's pace: the client reads the first bytes alone
            await stream.write(b"b" * 1_000)
            await stream.write_eof()
            return stream
        if path.startswith("/slow-hop/"):
            await asyncio.sleep(0.2)    # a slow server
            n = int(path.removeprefix("/slow-hop/"))
            if n < 2:
                raise web.HTTPFound(f"/slow-hop/{n + 1}")
            return web.Response(text="arrived")
        if path.startswith("/status/"):
            location = request.query.get("location")
            return web.Response(status=int(path.removeprefix("/status/")), text="answered",
                                headers={"Location": location} if location is not None else None)
        if path == "/echo":
            return web.json_response({"method": request.method, "body": (await request.read()).decode(),
                                      "query": dict(request.query)})
        return None


@pytest.fixture
async def business() -> AsyncIterator[Business]:
    server = Business()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    async with TestServer(app, host="127.0.0.1") as test_server:
        server.port = test_server.port or 0
        yield server


def policy_session(allow: list[str], answers: dict[str, list[str]] | None = None) -> Any:
    return OutboundPolicy(Settings(outbound_allow=allow).outbound_allow).session(resolver=FakeResolver(answers or {}))


# --- The static check: where a URL is written, and before every request ------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("https://user:secret@hooks.example.com/x", "credentials"),
    ("https://user@hooks.example.com/x", "credentials"),
    ("ftp://hooks.example.com/x", "only http and https"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "cloud metadata"),
    ("http://127.0.0.1:8080/", "loopback"),
    ("http://127.9.9.9/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://localhost:8080/", "localhost"),
    ("http://LocalHost./", "localhost"),
    ("http://api.localhost/", "localhost"),
    ("http://[::ffff:127.0.0.1]/", "IPv6 form of 127.0.0.1, a loopback"),
    ("http://[::ffff:169.254.169.254]/", "IPv6 form of 169.254.169.254, a cloud metadata"),
    ("http://[64:ff9b::a00:1]/", "IPv6 form of 10.0.0.1, a private"),
    ("http://10.1.2.3/", "private"),
    ("http://172.20.0.1/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://169.254.10.10/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fc00::1]/", "unique-local"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://127.1/", "legacy numeric form"),
    ("http://2130706433/", "legacy numeric form"),
])
def test_the_static_check_refuses(url: str, expected: str) -> None:
    with pytest.raises(OutboundRefused, match=expected) as refused:
        OutboundPolicy().check_url(url)
    assert "secret" not in str(refused.value), "a refusal never shows the URL's credentials"


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/chat?key=1", "http://93.184.216.34/", "http://[2606:4700::1111]/",
    "https://tools.example.com:8443/x", "http://[2002:5db8:d822::1]/",   # 6to4 of a public address
])
def test_the_static_check_lets_public_urls_through(url: str) -> None:
    OutboundPolicy().check_url(url)


def test_a_refusal_says_how_to_allow_it_and_the_allowlist_does() -> None:
    with pytest.raises(OutboundRefused, match=f"unless {ALLOW_SETTING} lists it"):
        OutboundPolicy().check_url("http://10.1.2.3/x")
    policy = OutboundPolicy(["10.0.0.0/8", "hooks.internal", "::1/128"])
    for url in ("http://10.1.2.3/x", "http://[::ffff:10.1.2.3]/x", "http://hooks.internal/x", "http://[::1]/"):
        policy.check_url(url)
    with pytest.raises(OutboundRefused, match="loopback"):
        policy.check_url("http://127.0.0.1/")
    with pytest.raises(OutboundRefused, match="credentials"):   # an allowed host still sends no credentials
        policy.check_url("http://user:pw@hooks.internal/x")


def test_the_allowlist_setting_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_SETTING, " 10.1.0.0/16, Hooks.Internal. ,127.0.0.1,[::1]")
    assert Settings().outbound_allow == ["10.1.0.0/16", "hooks.internal", "127.0.0.1/32", "::1/128"]
    monkeypatch.setenv(ALLOW_SETTING, "10.1.0.0/16, not a host")
    with pytest.raises(ValidationError, match="neither a network"):
        Settings()


# --- At run time: the session, its resolver and fetch --------------------------------------------------------------


async def test_a_server_on_this_machine_is_refused_by_default_and_reached_when_allowed(business: Business) -> None:
    async with policy_session([]) as http:
        with pytest.raises(OutboundRefused, match=f"loopback address.*{ALLOW_SETTING}"):
            await fetch(http, "GET", business.url + "/hello", timeout_s=5, max_bytes=1000)
        # The session refuses even when used without fetch: its middleware checks every request.
        with pytest.raises(OutboundRefused, match="loopback"):
            await http.get(business.url + "/hello")
    assert business.hits == []
    async with policy_session(["127.0.0.1"]) as http:
        answer = await fetch(http, "GET", business.url + "/hello", timeout_s=5, max_bytes=10_000)
    assert answer.status == 200 and json.loads(answer.body)["path"] == "/hello"


async def test_a_host_name_that_resolves_to_a_forbidden_address_is_refused_after_dns(business: Business) -> None:
    answers = {"db.example.com": ["10.0.0.5"], "mapped.example.com": ["::ffff:127.0.0.1"],
               "rebound.example.com": ["127.0.0.1"]}
    async with policy_session([], answers) as http:
        with pytest.raises(OutboundRefused, match=r"db\.example\.com .*10\.0\.0\.5 is a private address"):
            await fetch(http, "POST", "http://db.example.com/x", data=b"{}", timeout_s=5, max_bytes=1000)
        with pytest.raises(OutboundRefused, match=r"IPv6 form of 127\.0\.0\.1"):
            await fetch(http, "GET", f"http://mapped.example.com:{business.port}/", timeout_s=5, max_bytes=1000)
        with pytest.raises(OutboundRefused, match=r"127\.0\.0\.1 is a loopback address"):
            await fetch(http, "GET", f"http://rebound.example.com:{business.port}/", timeout_s=5, max_bytes=1000)
    assert business.hits == []


async def test_the_resolver_keeps_only_allowed_addresses_and_a_listed_host_keeps_all(business: Business) -> None:
    policy = OutboundPolicy(["127.0.0.1"])
    fake = FakeResolver({"mixed.example.com": ["169.254.169.254", "10.0.0.5", "127.0.0.1"],
                         "hooks.internal": ["10.0.0.7", "127.0.0.1"]})
    kept = await PolicyResolver(policy, fake).resolve("mixed.example.com", business.port)
    assert [r["host"] for r in kept] == ["127.0.0.1"]   # what aiohttp connects to: only what was checked
    listed = await PolicyResolver(OutboundPolicy(["hooks.internal"]), fake).resolve("hooks.internal", 80)
    assert [r["host"] for r in listed] == ["10.0.0.7", "127.0.0.1"]
    async with OutboundPolicy(["127.0.0.1"]).session(resolver=fake) as http:
        answer = await fetch(http, "GET", f"http://mixed.example.com:{business.port}/ok", timeout_s=5,
                             max_bytes=10_000)
    assert answer.status == 200 and business.hits == ["/ok"]


async def test_a_redirect_to_a_forbidden_address_is_refused(business: Business) -> None:
    answers = {"allowed.example.com": ["127.0.0.1"]}
    async with policy_session(["allowed.example.com"], answers) as http:
        with pytest.raises(OutboundRefused, match=r"redirect from http://allowed\.example\.com:\d+ was refused"):
            await fetch(http, "POST", f"http://allowed.example.com:{business.port}/to-loopback", data=b"{}",
                        timeout_s=5, max_bytes=1000)
        with pytest.raises(OutboundRefused, match="cloud metadata"):
            await fetch(http, "GET", f"http://allowed.example.com:{business.port}/to-metadata", timeout_s=5,
                        max_bytes=1000)
        # aiohttp following a redirect by itself (a session used without fetch) is checked on every hop too.
        with pytest.raises(OutboundRefused, match="loopback"):
            await http.get(f"http://allowed.example.com:{business.port}/to-loopback")
    assert "/secret" not in business.hits and business.hits.count("/to-loopback") == 2


async def test_at_most_three_redirects_are_followed(business: Business) -> None:
    async with policy_session(["127.0.0.1"]) as http:
        answer = await fetch(http, "GET", business.url + "/hop/1", timeout_s=5, max_bytes=1000)
        assert (answer.status, answer.body) == (200, b"arrived")
        business.hits.clear()
        with pytest.raises(OutboundRefused, match="redirected more than 3 times"):
            await fetch(http, "GET", business.url + "/hop/0", timeout_s=5, max_bytes=1000)
    assert business.hits == ["/hop/0", "/hop/1", "/hop/2", "/hop/3"]


async def test_a_redirect_elsewhere_leaves_the_callers_headers_behind(business: Business) -> None:
    answers = {"first.example.com": ["127.0.0.1"]}
    headers = {"X-Api-Key": "tool-secret", "Content-Type": "application/json"}
    async with policy_session(["first.example.com", "127.0.0.1"], answers) as http:
        same = f"http://first.example.com:{business.port}/away?to=/echo"
        await fetch(http, "POST", same, data=b"{}", headers=headers, timeout_s=5, max_bytes=10_000)
        other = f"http://first.example.com:{business.port}/away?to={business.url}/echo"
        await fetch(http, "POST", other, data=b"{}", headers=headers, timeout_s=5, max_bytes=10_000)
    assert business.hits == ["/away", "/echo", "/away", "/echo"]
    assert business.headers[1]["X-Api-Key"] == "tool-secret", "the same origin keeps them"
    assert "X-Api-Key" not in business.headers[3], "another origin does not get them"


async def test_the_answer_is_read_up_to_the_cap_and_the_time_is_capped(business: Business) -> None:
    async with policy_session(["127.0.0.1"]) as http:
        big = await fetch(http, "GET", business.url + "/big", timeout_s=5, max_bytes=1000)
        assert (len(big.body), big.truncated) == (1000, True)
        whole = await fetch(http, "GET", business.url + "/big", timeout_s=5, max_bytes=1_000_000)
        assert (len(whole.body), whole.truncated) == (1_000_000, False)
        with pytest.raises(TimeoutError):
            await fetch(http, "GET", business.url + "/slow", timeout_s=0.2, max_bytes=1000)


# --- Where URLs are written: files, settings and the API ---------------------------------------------------------


@pytest.mark.parametrize(("agent", "numbers", "overrides", "expected"), [
    (agent_file(retell_llm={"general_tools": [tool("book", "https://me:pw@tools.example.com/book")]}), None, {},
     "general_tools.0.url (tool 'book'): https://tools.example.com: the URL carries credentials"),
    (agent_file(webhook_url="http://169.254.169.254/latest/meta-data/"), None, {},
     "webhook_url: http://169.254.169.254 is not allowed: 169.254.169.254 is a cloud metadata address"),
    (agent_file(retell_llm={"general_tools": [tool("book", "http://127.0.0.1:9/book")]}), None,
     {"outbound_allow": []}, f"general_tools.0.url (tool 'book'): http://127.0.0.1:9 is not allowed: 127.0.0.1 is a "
                             f"loopback address. Parley calls no internal address on a user's behalf unless "
                             f"{ALLOW_SETTING} lists it"),
    (agent_file(retell_llm={"general_tools": [tool("book", "https://tools.example.com/book",
                                                   headers={"X-Key": "a\r\nInjected: yes"})]}), None, {},
     "retell_llm.general_tools.0.headers (tool 'book', header 'X-Key'): the value contains a line break"),
    (agent_file(retell_llm={"general_tools": [tool("book", "https://tools.example.com/book",
                                                   headers={"Bad Name": "v"})]}), None, {},
     "header 'Bad Name'): 'Bad Name' is not a valid header name"),
    (agent_file(), [{**DEFAULT_NUMBERS[0], "inbound_sms_webhook_url": "http://[::ffff:127.0.0.1]:9/hook"}],
     {"outbound_allow": []}, "[0].inbound_sms_webhook_url: http://[::ffff:7f00:1]:9 is not allowed"),
    (agent_file(), None, {"webhook_url": "http://localhost:9/events", "outbound_allow": []},
     "PARLEY_WEBHOOK_URL: http://localhost:9 is not allowed: localhost is this machine"),
])
def test_files_and_settings_naming_forbidden_urls_or_bad_headers_do_not_load(
    tmp_path: Path, fake_twilio: FakeTwilio, fake_llm: FakeOpenAI, agent: dict[str, Any],
    numbers: list[dict[str, Any]] | None, overrides: dict[str, Any], expected: str,
) -> None:
    write_agents(tmp_path / "agents", {"frontdesk": agent}, numbers or DEFAULT_NUMBERS)
    settings = build_settings(None, tmp_path / "agents", fake_twilio, fake_llm, **overrides)
    with pytest.raises(ConfigError) as refused:
        agent_files.load(settings)
    assert expected in str(refused.value)


def test_a_templated_tool_url_is_left_to_run_time(
    tmp_path: Path, fake_twilio: FakeTwilio, fake_llm: FakeOpenAI,
) -> None:
    agent = agent_file(retell_llm={"general_tools": [tool("book", "http://127.0.0.1:9/book?chat={{chat_id}}")]})
    write_agents(tmp_path / "agents", {"frontdesk": agent}, DEFAULT_NUMBERS)
    agent_files.load(build_settings(None, tmp_path / "agents", fake_twilio, fake_llm, outbound_allow=[]))


LLM_WITH = {"general_prompt": "p", "model": "gpt-test"}


@pytest.mark.parametrize(("path", "body", "expected"), [
    ("/create-retell-llm", {**LLM_WITH, "general_tools": [tool("book", "https://a:b@tools.example.com/x")]},
     "general_tools.0.url (tool 'book'): https://tools.example.com: the URL carries credentials"),
    ("/create-retell-llm", {**LLM_WITH, "general_tools": [tool("book", "http://169.254.169.254/latest/")]},
     "general_tools.0.url (tool 'book'): http://169.254.169.254 is not allowed: 169.254.169.254 is a cloud "
     "metadata address"),
    ("/create-retell-llm", {**LLM_WITH, "general_tools": [tool("book", "https://tools.example.com/x",
                                                                headers={"X-Key": "v\nX-Other: 1"})]},
     "general_tools.0.headers (tool 'book', header 'X-Key'): the value contains a line break"),
    ("/create-chat-agent", {"response_engine": {"type": "retell-llm", "llm_id": "llm_frontdesk"},
                            "webhook_url": "http://[::ffff:169.254.169.254]/"},
     "webhook_url: http://[::ffff:a9fe:a9fe] is not allowed"),
    ("/import-phone-number", {"phone_number": "+15035550111", "inbound_sms_webhook_url": "http://10.0.0.8/hook"},
     "inbound_sms_webhook_url: http://10.0.0.8 is not allowed: 10.0.0.8 is a private address"),
])
async def test_the_api_refuses_forbidden_urls_and_bad_headers(
    make_parley: MakeParley, path: str, body: dict[str, Any], expected: str,
) -> None:
    parley = await make_parley()
    response = await parley.api("POST", path, json=body)
    assert response.status == 422, await response.text()
    message = (await response.json())["message"]
    assert expected in message


async def test_updates_through_the_api_are_checked_too(make_parley: MakeParley) -> None:
    parley = await make_parley()
    good = {**LLM_WITH, "general_tools": [tool("book", "https://tools.example.com/x", headers={"X-Key": "k"})]}
    created = await parley.api("POST", "/create-retell-llm", json=good)
    assert created.status == 201, await created.text()
    llm_id = (await created.json())["llm_id"]
    bad = {"general_tools": [tool("book", "https://tools.example.com/x", headers={"X-Key": "k\r\n"})]}
    updated = await parley.api("PATCH", f"/update-retell-llm/{llm_id}", json=bad)
    assert updated.status == 422 and "header 'X-Key'" in (await updated.json())["message"]
    imported = await parley.api("POST", "/import-phone-number", json={"phone_number": "+15035550111"})
    assert imported.status == 201, await imported.text()
    patched = await parley.api("PATCH", "/update-phone-number/+15035550111",
                               json={"inbound_sms_webhook_url": "https://u:p@hooks.example.com/x"})
    assert patched.status == 422 and "credentials" in (await patched.json())["message"]


# --- Through Parley: a tool, events and chat_inbound -------------------------------------------------------------


@pytest.mark.parametrize("allowed", [False, True])
async def test_a_tool_on_this_machine_is_refused_unless_allowed(
    make_parley: MakeParley, business: Business, allowed: bool,
) -> None:
    # A templated URL passes the file check; the rendered one is judged when the tool is called.
    url = business.url + "/book?chat={{chat_id}}"
    parley = await make_parley(agent=agent_file(retell_llm={"general_tools": [tool("book_visit", url)]}),
                               outbound_allow=["127.0.0.1"] if allowed else [])
    parley.llm.respond = call_then_answer("book_visit", '{"day": "Friday"}')
    await parley.text("book me friday")
    sent = await parley.twilio.wait_for(1)
    await parley.idle()
    chat = await parley.chat_of()
    result = chat["message_with_tool_calls"][2]
    if allowed:
        assert business.hits == ["/book"] and result["successful"] is True
        assert json.loads(sent[0].body.removeprefix("Result: "))["query"] == {"chat": chat["chat_id"]}
    else:
        assert business.hits == []
        assert sent[0].body.startswith("Result: The tool's URL is not allowed: http://127.0.0.1:")
        assert ALLOW_SETTING in sent[0].body and result["successful"] is False


async def test_a_tool_header_that_cannot_be_sent_is_a_tool_error_and_the_turn_goes_on(
    make_parley: MakeParley, business: Business,
) -> None:
    parley = await make_parley(
        agent=agent_file(retell_llm={"general_tools": [tool("book_visit", business.url + "/book")]}),
        catalog_cache_ms=0)
    # It cannot be written through the files or the API: put it straight into Redis, as a new LLM version and an
    # agent version that names it.
    catalog = parley.client.app[RUNTIME].catalog
    current = await catalog.llms.get("llm_frontdesk")
    tools = [{**current.general_tools[0].model_dump(), "headers": {"X-Key": "a\r\nInjected: yes"}}]
    llm = await catalog.llms.append(RetellLLM.model_validate({**current.model_dump(), "general_tools": tools}),
                                    published=True)
    agent = await catalog.agents.get("frontdesk")
    assert agent.response_engine is not None
    await catalog.agents.append(agent.model_copy(update={
        "response_engine": agent.response_engine.model_copy(update={"version": llm.version})}), published=True)
    parley.llm.respond = call_then_answer("book_visit", '{"day": "Friday"}')
    await parley.text("book me friday")
    sent = await parley.twilio.wait_for(1)
    assert sent[0].body == ("Result: The tool's header X-Key could not be sent: the value contains a line break "
                            "(CR or LF) or a NUL, which a header may not.")
    await parley.idle()
    result = (await parley.chat_of())["message_with_tool_calls"][2]
    assert result["role"] == "tool_call_result" and result["successful"] is False
    assert business.hits == []


async def test_events_to_this_machine_do_not_load_by_default_and_are_delivered_when_allowed(
    make_parley: MakeParley, business: Business,
) -> None:
    agent = agent_file(webhook_url=business.url + "/events", webhook_events=["chat_started"])
    with pytest.raises(ConfigError, match=r"webhook_url: http://127\.0\.0\.1:.* loopback"):
        await make_parley(agent=agent, outbound_allow=[])
    parley = await make_parley(agent=agent, outbound_allow=["127.0.0.1"])
    await parley.text("hi")
    await parley.twilio.wait_for(1)
    async with asyncio.timeout(10):
        await business.arrived.wait()
    assert business.hits == ["/events"]


async def wait_for_failed_event(parley: Any, chat_id: str) -> Event:
    failed = keys.outbox_failed(keys.shard_of(chat_id))
    async with asyncio.timeout(10):
        while True:
            raw = await parley.redis.lindex(failed, 0)
            if raw:
                return Event.from_json(raw)
            await asyncio.sleep(0.02)


async def test_an_event_redirected_to_a_forbidden_address_fails_at_once_for_good(
    make_parley: MakeParley, business: Business,
) -> None:
    # localhost is allowed by name (whatever it resolves to); its redirect to 127.0.0.1 is not.
    agent = agent_file(webhook_url=f"http://localhost:{business.port}/to-loopback", webhook_events=["chat_started"])
    parley = await make_parley(agent=agent, outbound_allow=["localhost"], event_retry_base_ms=10)
    await parley.text("hi")
    await parley.twilio.wait_for(1)
    [chat_id] = await parley.chat_ids()
    event = await wait_for_failed_event(parley, chat_id)
    assert event.attempts == 1, "a refusal is final: not retried"
    assert event.last_error is not None and "was refused" in event.last_error and ALLOW_SETTING in event.last_error
    assert business.hits == ["/to-loopback"]


async def test_a_refused_chat_inbound_webhook_is_recorded_and_the_numbers_agent_answers(
    make_parley: MakeParley, business: Business,
) -> None:
    numbers = [{**DEFAULT_NUMBERS[0], "inbound_sms_webhook_url": f"http://localhost:{business.port}/to-loopback"}]
    parley = await make_parley(numbers=numbers, outbound_allow=["localhost"], inbound_webhook_attempts=3)
    await parley.text("hello")
    sent = await parley.twilio.wait_for(1)
    assert sent[0].body == "You said: hello"
    await parley.idle()
    chat = await parley.chat_of()
    assert chat["agent_id"] == "frontdesk"
    assert chat["inbound_webhook_error"].startswith("chat_inbound webhook not called: the redirect from "
                                                    f"http://localhost:{business.port} was refused")
    assert business.hits == ["/to-loopback"], "a refusal is final: not tried again"


async def test_chat_inbound_on_this_machine_does_not_load_by_default_and_is_called_when_allowed(
    make_parley: MakeParley, business: Business,
) -> None:
    numbers = [{**DEFAULT_NUMBERS[0], "inbound_sms_webhook_url": business.url + "/inbound"}]
    with pytest.raises(ConfigError, match=r"\[0\]\.inbound_sms_webhook_url: .*loopback"):
        await make_parley(numbers=numbers, outbound_allow=[])
    parley = await make_parley(numbers=numbers, outbound_allow=["127.0.0.1"])
    await parley.text("hello")
    await parley.twilio.wait_for(1)
    assert business.hits == ["/inbound"]


@pytest.mark.parametrize(("path", "expected"), [
    ("/html", "chat_inbound webhook answered with something that is not JSON (text/html, 34 bytes)"),
    ("/typed-wrong", "chat_inbound webhook answer: chat_inbound.override_agent_version: Value error, expected a "
                     "version number"),
])
async def test_the_inbound_webhook_error_does_not_show_what_the_url_answered(
    make_parley: MakeParley, business: Business, path: str, expected: str,
) -> None:
    numbers = [{**DEFAULT_NUMBERS[0], "inbound_sms_webhook_url": business.url + path}]
    parley = await make_parley(numbers=numbers)
    await parley.text("hello")
    await parley.twilio.wait_for(1)
    await parley.idle()
    error = (await parley.chat_of(to=AGENT_NUMBER))["inbound_webhook_error"]
    assert error.startswith(expected)
    assert "SECRET" not in error


# --- The policy's parts, directly ----------------------------------------------------------------------------------


def test_the_refusals_say_exactly_what_and_why() -> None:
    policy = OutboundPolicy()
    cases = {
        "http://10.1.2.3:8080/x?key=1": "http://10.1.2.3:8080 is not allowed: 10.1.2.3 is a private address. Parley "
                                        f"calls no internal address on a user's behalf unless {ALLOW_SETTING} lists it",
        "http://db.localhost/": f"http://db.localhost is not allowed: db.localhost is this machine. Parley calls no "
                                f"internal address on a user's behalf unless {ALLOW_SETTING} lists it",
        "http://127.1/": "'127.1' is an IPv4 address written in a legacy numeric form: write it as four decimal "
                         "numbers (a.b.c.d)",
        "ftp://files.example.com/x": "ftp://files.example.com: only http and https URLs may be called",
        "/relative/path": "?://: only http and https URLs may be called",
        "mailto:someone@example.com": "mailto://: only http and https URLs may be called",
        "http:///no-host": "http://: the URL has no host",
        "https://:pw@hooks.example.com/": "https://hooks.example.com: the URL carries credentials (user@host), which "
                                          "Parley does not send: put them in a header",
        "http://[::1": "the URL is not a valid URL",
        "http://[2002:7f00:1::1]/": "http://[2002:7f00:1::1] is not allowed: 2002:7f00:1::1 is an IPv6 form of "
                                    "127.0.0.1, a loopback address. Parley calls no internal address on a user's "
                                    f"behalf unless {ALLOW_SETTING} lists it",
    }
    for url, expected in cases.items():
        with pytest.raises(OutboundRefused) as refused:
            policy.check_url(url)
        assert str(refused.value) == expected, url
    assert policy.check_url("http://[2002:5db8:d822::1]/x") == URL("http://[2002:5db8:d822::1]/x")
    assert policy.check_url(URL("https://hooks.example.com/a?b=1")) == URL("https://hooks.example.com/a?b=1")


def test_what_an_address_is() -> None:
    assert forbidden(ip_address("64:ff9b::7f00:1")) == "an IPv6 form of 127.0.0.1, a loopback address"
    assert forbidden(ip_address("64:ff9b::5db8:d822")) is None
    assert forbidden(ip_address("::ffff:93.184.216.34")) is None
    assert forbidden(ip_address("93.184.216.34")) is None
    assert forbidden(ip_address("169.254.169.254")) == "a cloud metadata address"


def test_the_allowlist_takes_networks_loosely_and_host_names_as_written() -> None:
    policy = OutboundPolicy(["10.1.2.3/8", "Hooks.Internal.", "[::1]", "64:ff9b::/96"])
    policy.check_url("http://10.9.9.9/")                      # 10.1.2.3/8 is read as 10.0.0.0/8
    policy.check_url("http://hooks.internal./x")
    policy.check_url("http://HOOKS.internal/x")
    policy.check_url("http://[::1]/")                         # a host name "::1" once its brackets are off
    assert policy.allows_host("hooks.INTERNAL") and not policy.allows_host("other.internal")
    assert policy.refusal(ip_address("64:ff9b::a00:1")) is None, "the IPv6 form is listed itself"
    assert OutboundPolicy(["10.0.0.0/8"]).refusal(ip_address("64:ff9b::a00:1")) is None, "its IPv4 address is listed"
    assert OutboundPolicy(["10.0.0.0/8"]).refusal(ip_address("fc00::1")) == "a unique-local (private) address"


def test_a_header_that_could_smuggle_another_is_a_problem() -> None:
    assert header_problem("X-Api-Key", "XYZ value, with: anything else") is None
    assert header_problem("X-Key", "a\0b") == (
        "the value contains a line break (CR or LF) or a NUL, which a header may not")
    assert header_problem("X-Key", "a\rb") is not None and header_problem("X-Key", "a\nb") is not None
    assert header_problem("Bad Name", "v") == ("'Bad Name' is not a valid header name (letters, digits and "
                                               "!#$%&'*+-.^_`|~ only)")
    assert header_problem("X-Key:", "v") is not None


class RecordingResolver(FakeResolver):
    """A FakeResolver that records what it was asked and whether it was closed."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        super().__init__(answers)
        self.asked: list[tuple[str, int, socket.AddressFamily]] = []
        self.closed = False

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.asked.append((host, port, family))
        return await super().resolve(host, port, family)

    async def close(self) -> None:
        self.closed = True


async def test_the_resolver_passes_the_question_on_and_says_why_it_refuses() -> None:
    inner = RecordingResolver({"ok.example.com": ["93.184.216.34"], "bad.example.com": ["10.0.0.5", "not-an-ip"],
                               "empty.example.com": []})
    resolver = PolicyResolver(OutboundPolicy(), inner)
    [kept] = await resolver.resolve("ok.example.com", 8443, socket.AF_INET6)
    assert (kept["host"], kept["port"]) == ("93.184.216.34", 8443)
    assert inner.asked == [("ok.example.com", 8443, socket.AF_INET6)]
    with pytest.raises(OutboundRefused) as refused:
        await resolver.resolve("bad.example.com", 80)
    assert str(refused.value) == (
        "bad.example.com is not allowed: it resolves only to addresses Parley may not call (10.0.0.5 is a private "
        "address; not-an-ip is not an IP address). Parley calls no internal address on a user's behalf unless "
        f"{ALLOW_SETTING} lists it")
    with pytest.raises(OutboundRefused, match=r"\(no address at all\)"):
        await resolver.resolve("empty.example.com", 80)
    await resolver.close()
    assert inner.closed


async def test_closing_the_session_closes_its_resolver() -> None:
    inner = RecordingResolver({})
    async with OutboundPolicy().session(resolver=inner) as http:
        assert isinstance(http.connector, PolicyConnector)
    assert inner.closed


async def test_fetch_needs_a_policy_session() -> None:
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(TypeError) as refused:
            await fetch(plain, "GET", "https://hooks.example.com/", timeout_s=1, max_bytes=10)
    assert str(refused.value) == "needs a session built by OutboundPolicy.session()"


async def test_the_session_ignores_proxy_settings(business: Business, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")   # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with policy_session(["127.0.0.1"]) as http:
        answer = await fetch(http, "GET", business.url + "/hello", timeout_s=5, max_bytes=10_000)
    assert answer.status == 200 and business.hits == ["/hello"]


async def test_fetch_returns_the_answer_and_its_type(business: Business) -> None:
    async with policy_session(["127.0.0.1"]) as http:
        html = await fetch(http, "GET", business.url + "/html", timeout_s=5, max_bytes=10_000)
        assert (html.status, html.content_type, html.truncated) == (200, "text/html", False)
        assert html.body == b"<html>SECRET-METADATA-TOKEN</html>"
        exact = await fetch(http, "GET", business.url + "/html", timeout_s=5, max_bytes=len(html.body))
        assert (exact.body, exact.truncated) == (html.body, False)
        short = await fetch(http, "GET", business.url + "/html", timeout_s=5, max_bytes=len(html.body) - 1)
        assert (short.body, short.truncated) == (html.body[:-1], True)
        # Not a redirect: a Location on another status, or a redirect status without one, is the answer.
        created = await fetch(http, "POST", business.url + "/status/201?location=/secret", timeout_s=5, max_bytes=100)
        assert (created.status, created.body) == (201, b"answered")
        bare = await fetch(http, "GET", business.url + "/status/302", timeout_s=5, max_bytes=100)
        assert (bare.status, bare.body) == (302, b"answered")
    assert "/secret" not in business.hits


@pytest.mark.parametrize(("status", "method", "followed_with"), [
    (301, "POST", "GET"), (302, "POST", "GET"), (303, "PUT", "GET"), (303, "GET", "GET"), (307, "POST", "POST"),
    (308, "PUT", "PUT"), (301, "PUT", "PUT"), (302, "GET", "GET"),
])
async def test_a_redirect_is_followed_as_browsers_do(
    business: Business, status: int, method: str, followed_with: str,
) -> None:
    # What changes to a GET loses its body; the rest is sent again as it was.
    body = "" if status == 303 or (status in (301, 302) and method == "POST") else "payload"
    async with policy_session(["127.0.0.1"]) as http:
        answer = await fetch(http, method, f"{business.url}/status/{status}", params={"location": "/echo"},
                             data=b"payload", timeout_s=5, max_bytes=10_000)
    echoed = json.loads(answer.body)
    assert (echoed["method"], echoed["body"]) == (followed_with, body)
    assert echoed["query"] == {}, "the caller's query parameters go to the first URL only"
    assert business.hits == [f"/status/{status}", "/echo"]


async def test_a_redirect_to_another_origin_keeps_only_the_harmless_headers(business: Business) -> None:
    answers = {"first.example.com": ["127.0.0.1"]}
    headers = {"X-Api-Key": "tool-secret", "Content-Type": "application/json", "Accept": "application/json"}
    async with policy_session(["first.example.com", "127.0.0.1"], answers) as http:
        away = f"http://first.example.com:{business.port}/status/307?location={business.url}/echo"
        await fetch(http, "POST", away, data=b"{}", headers=headers, timeout_s=5, max_bytes=10_000)
    sent = business.headers[1]
    assert (sent.get("Content-Type"), sent.get("Accept"), sent.get("X-Api-Key")) == (
        "application/json", "application/json", None)


async def test_a_redirect_to_something_that_is_not_a_url_is_refused(business: Business) -> None:
    async with policy_session(["127.0.0.1"]) as http:
        with pytest.raises(OutboundRefused) as refused:
            await fetch(http, "GET", business.url + "/status/302?location=http://[::1", timeout_s=5, max_bytes=100)
    assert str(refused.value) == f"{business.url} redirected to something that is not a URL"


async def test_too_many_redirects_say_where_it_started(business: Business) -> None:
    async with policy_session(["127.0.0.1"]) as http:
        with pytest.raises(OutboundRefused) as refused:
            await fetch(http, "GET", business.url + "/hop/0?secret=1", timeout_s=5, max_bytes=1000)
    assert str(refused.value) == (f"{business.url} redirected more than 3 times: Parley follows at most 3 redirects "
                                  "(point the URL at where it ends up)")


async def test_the_cap_holds_when_the_answer_comes_in_pieces(business: Business) -> None:
    async with policy_session(["127.0.0.1"]) as http:
        capped = await fetch(http, "GET", business.url + "/drip", timeout_s=5, max_bytes=20)
        whole = await fetch(http, "GET", business.url + "/drip", timeout_s=5, max_bytes=2_000)
    assert (capped.body, capped.truncated) == (b"a" * 10 + b"b" * 10, True)
    assert (whole.body, whole.truncated) == (b"a" * 10 + b"b" * 1_000, False)


async def test_the_time_limit_covers_every_hop(business: Business) -> None:
    async with policy_session(["127.0.0.1"]) as http:
        arrived = await fetch(http, "GET", business.url + "/slow-hop/0", timeout_s=5, max_bytes=100)
        assert arrived.body == b"arrived"
        with pytest.raises(TimeoutError):   # each hop is within it, all three are not
            await fetch(http, "GET", business.url + "/slow-hop/0", timeout_s=0.5, max_bytes=100)
