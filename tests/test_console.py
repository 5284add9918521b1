"""The operator console over HTTP: sign-in, sessions, CSRF, roles, security headers, and the pages' content.
(The browser tests, tests/test_console_browser.py, drive the same pages in Chromium.)"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from typing import Any, cast

import pytest
from aiohttp import ClientResponse
from pydantic import ValidationError

from service.app_state import RUNTIME
from service.cli.commands import main
from service.console.overview import Day
from service.metrics import Tally
from service.settings import Settings
from service.storage import keys

from .conftest import AGENT_NUMBER, API_KEY, USER, MakeParley, Parley, answered
from .test_flows import BOOKING, BOOKS, started
from .test_knowledge_turn import KB, answering
from .test_sms import status_callback

READ_KEY = "test-read-key"
WRITE_KEY = "test-write-key"
HOOK_KEY = "test-webhook-key"
ROLES = {"scoped_api_keys": [{"key": READ_KEY, "role": "read"}, {"key": WRITE_KEY, "role": "write"},
                             {"key": HOOK_KEY, "role": "webhook"}]}


@pytest.fixture
async def parley(make_parley: MakeParley) -> Parley:
    return await make_parley(**ROLES)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def sign_in(parley: Parley, key: str = API_KEY) -> str:
    """Sign in with ``key``; the session's CSRF token."""
    page = await parley.client.get("/console/login")
    response = await parley.client.post("/console/login", data={"csrf": csrf_of(await page.text()), "api_key": key,
                                                                "next": "/console/chats"}, allow_redirects=False)
    assert response.status == 303, await response.text()
    chats = await parley.client.get("/console/chats")
    assert chats.status == 200
    return csrf_of(await chats.text())


async def post(parley: Parley, path: str, data: dict[str, Any]) -> ClientResponse:
    return await parley.client.post(path, data=data, allow_redirects=False)


async def test_nothing_without_a_session(parley: Parley) -> None:
    page = await parley.client.get("/console/chats", allow_redirects=False)
    assert page.status == 303 and page.headers["Location"] == "/console/login?next=/console/chats"
    for path in ("/console/overview", "/console/dev", "/console/agents", "/console/live", "/console/opt-outs"):
        assert (await parley.client.get(path, headers={"HX-Request": "true"})).status == 401
    refused = await post(parley, "/console/measure", {"content": "hi"})
    assert refused.status == 401
    # The API still wants its bearer key, and a console session is not one.
    await sign_in(parley)
    assert (await parley.client.get("/list-chat")).status == 401


async def test_sign_in_cookie_and_headers(parley: Parley) -> None:
    login = await parley.client.get("/console/login")
    csp = login.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    response = await post(parley, "/console/login", {"csrf": csrf_of(await login.text()), "api_key": API_KEY})
    cookie = response.cookies["parley_console"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/console"
    session_id = cookie.value.partition(".")[0]
    assert await parley.redis.ttl(keys.console_session(session_id)) > 3600
    # A forged signature is no session.
    parley.client.session.cookie_jar.clear()
    parley.client.session.cookie_jar.update_cookies({"parley_console": session_id + ".00"})
    assert (await parley.client.get("/console/chats", allow_redirects=False)).status == 303


async def test_wrong_keys_and_login_csrf(parley: Parley) -> None:
    login = await parley.client.get("/console/login")
    token = csrf_of(await login.text())
    wrong = await post(parley, "/console/login", {"csrf": token, "api_key": "nope"})
    assert wrong.status == 401 and "No API key" in await wrong.text()
    hook = await post(parley, "/console/login", {"csrf": token, "api_key": HOOK_KEY})
    assert hook.status == 401 and "webhook-signing key" in await hook.text()
    forged = await post(parley, "/console/login", {"csrf": "forged", "api_key": API_KEY})
    assert forged.status == 403 and "parley_console" not in forged.cookies


async def test_csrf_on_every_act(parley: Parley) -> None:
    await answered(parley, "Hello")
    chat = await parley.chat_of()
    csrf = await sign_in(parley)
    path = f"/console/chats/{chat['chat_id']}/pause"
    for data in ({}, {"csrf": "wrong"}):
        refused = await post(parley, path, data)
        assert refused.status == 403 and "CSRF" in await refused.text()
    assert (await parley.chat_of())["agent_paused"] is False
    done = await post(parley, path, {"csrf": csrf})
    assert done.status == 303
    assert (await parley.chat_of())["agent_paused"] is True
    # htmx sends the token as a header.
    measured = await parley.client.post("/console/measure", data={"content": "Caf\u00e9 \u2019"},
                                        headers={"X-CSRF-Token": csrf})
    assert measured.status == 200 and "UCS-2 because of" in await measured.text()


async def test_read_only_key_sees_but_cannot_act(parley: Parley) -> None:
    await answered(parley, "Hello")
    chat = await parley.chat_of()
    csrf = await sign_in(parley, READ_KEY)
    page = await parley.client.get(f"/console/chats/{chat['chat_id']}")
    assert page.status == 200 and "read-only key" in await page.text()
    refused = await post(parley, f"/console/chats/{chat['chat_id']}/pause", {"csrf": csrf})
    assert refused.status == 403 and "'read' key" in await refused.text()
    assert (await parley.chat_of())["agent_paused"] is False


async def test_logout_ends_the_session_everywhere(parley: Parley) -> None:
    csrf = await sign_in(parley)
    assert len([k async for k in parley.redis.scan_iter(match=keys.console_session("*"))]) == 1
    assert (await post(parley, "/console/logout", {"csrf": csrf})).status == 303
    assert [k async for k in parley.redis.scan_iter(match=keys.console_session("*"))] == []
    assert (await parley.client.get("/console/chats", allow_redirects=False)).status == 303


async def test_pages_render(parley: Parley) -> None:
    await answered(parley, "Hello")
    chat = await parley.chat_of()
    await sign_in(parley)
    for path in ("/console/chats", f"/console/chats/{chat['chat_id']}", "/console/overview", "/console/dev",
                 "/console/agents", "/console/agents/frontdesk", "/console/numbers", "/console/opt-outs",
                 f"/console/chats?user={USER}", f"/console/chats?number={AGENT_NUMBER}&human=1"):
        page = await parley.client.get(path)
        assert page.status == 200, (path, await page.text())
    listing = await (await parley.client.get("/console/chats?user=(415) 555-0123")).text()
    assert chat["chat_id"] in listing
    bad = await parley.client.get("/console/chats?user=not-a-number")
    assert bad.status == 422 and "is not a phone number" in await bad.text()


async def read_events(response: ClientResponse, wanted: str, within_s: float = 10.0) -> list[str]:
    """The ``data:`` lines of an event stream, until one is ``wanted``."""
    seen: list[str] = []
    async with asyncio.timeout(within_s):
        while wanted not in seen:
            line = (await response.content.readline()).decode().strip()
            if line.startswith("data: "):
                seen.append(line.removeprefix("data: "))
    return seen


async def test_the_live_feed_works_across_processes(make_parley: MakeParley) -> None:
    web = await make_parley(run_workers=False, **ROLES)   # serves the console, runs no turns
    worker = await make_parley(**ROLES)                     # receives the text and runs the turn
    await sign_in(web)
    stream = await web.client.get("/console/live")
    assert stream.headers["Content-Type"] == "text/event-stream"
    # Two reloads: the stream's own when it joins, then the process's subscription's once it holds (the first
    # stream of a process starts it).
    seen = await read_events(stream, "reload")
    if seen.count("reload") < 2:
        await read_events(stream, "reload")
    await answered(worker, "Hello")
    chat_id = (await worker.chat_of())["chat_id"]
    await read_events(stream, chat_id)
    # A delivery status that moves is told too (the page shows it), and one that does not move is not.
    assert await status_callback(worker, worker.twilio.messages[-1].sid, "delivered") == 204
    await read_events(stream, chat_id)
    assert await status_callback(worker, worker.twilio.messages[-1].sid, "sent") == 204
    assert (await post(web, f"/console/chats/{chat_id}/pause", {"csrf": await sign_in(web)})).status == 303
    assert await read_events(stream, chat_id) == [chat_id]   # the pause's; not the stale "sent"
    # The API's pause and resume are told too: an open conversation shows them.
    assert (await worker.api("PATCH", f"/update-chat/{chat_id}", json={"agent_paused": False})).status == 200
    assert await read_events(stream, chat_id) == [chat_id]
    stream.close()


async def test_commits_publish_only_while_a_live_view_is_open(make_parley: MakeParley) -> None:
    web = await make_parley(run_workers=False, **ROLES)
    worker = await make_parley(**ROLES)
    async with worker.redis.pubsub() as feed:
        await feed.subscribe(keys.LIVE)   # a plain subscriber: not a console view
        await answered(worker, "Hello")
        await asyncio.sleep(0)
        assert await feed.get_message(ignore_subscribe_messages=True, timeout=0.2) is None   # nobody watched
        await sign_in(web)
        stream = await web.client.get("/console/live")
        await read_events(stream, "reload")
        assert await worker.redis.ttl(keys.LIVE_WATCHED) > 0
        worker.client.app[RUNTIME].watchers.read.clear()   # the worker's last look is a second old by now
        await answered(worker, "Again")
        published = await feed.get_message(ignore_subscribe_messages=True, timeout=5)
        assert published is not None and published["data"] == (await worker.chat_of())["chat_id"]
        # The view's late refresh: what other processes committed before they saw it is shown too.
        assert (await read_events(stream, "reload")).count("reload") >= 1
        stream.close()


async def test_dev_phone_is_a_real_turn_without_twilio_or_counts(parley: Parley) -> None:
    await answered(parley, "Hello")   # a real text: counted
    csrf = await sign_in(parley)
    sent = await post(parley, "/console/dev/text", {"csrf": csrf, "number": AGENT_NUMBER, "user": "(555) 555-0199",
                                                     "body": "Testing"})
    assert sent.status == 303 and sent.headers["Location"] == "/console/dev?number=%2B15035550100&user=%2B15555550199"
    conv = keys.Conversation(AGENT_NUMBER, "+15555550199", "dev")
    await parley.idle()   # the text was in the mailbox before the answer
    chat_id = cast(str, await parley.redis.get(keys.current_chat(conv)))   # decoded
    chat = await (await parley.api("GET", f"/get-chat/{chat_id}")).json()
    replies = [m["content"] for m in chat["message_with_tool_calls"] if m["role"] == "agent"]
    assert chat["channel"] == "dev" and replies == ["You said: Testing"]
    assert [m.body for m in parley.twilio.messages] == ["You said: Hello"]   # Twilio never saw the test
    page = await (await parley.client.get(sent.headers["Location"])).text()
    assert "You said: Testing" in page and "delivered" in page
    # HELP is answered at once, as the webhook's TwiML would.
    helped = await post(parley, "/console/dev/text", {"csrf": csrf, "number": AGENT_NUMBER, "user": "+15555550199",
                                                       "body": "HELP"})
    assert helped.status == 200 and "Answered at once" in await helped.text()
    unknown = await post(parley, "/console/dev/text", {"csrf": csrf, "number": "+15035550111", "user": USER,
                                                        "body": "Hi"})
    assert unknown.status == 422 and "is not one of Parley&#39;s numbers" in await unknown.text()
    # The overview counts the real text only.
    overview = await (await parley.client.get("/console/overview")).text()
    assert re.search(r'class="big">1 / 1<', overview), overview
    counters = cast(dict[str, str], await parley.redis.hgetall(keys.stats(keys.end_day(int(time.time() * 1000)))))
    assert {k.partition(":")[2]: int(v) for k, v in counters.items() if k.split(":")[1] != "lat"} == {
        f"in:{AGENT_NUMBER}": 1, f"out:{AGENT_NUMBER}": 1, f"seg:{AGENT_NUMBER}": 1}
    assert sum(int(v) for k, v in counters.items() if k.split(":")[1] == "lat") == 1   # the reply's latency
    assert await parley.redis.ttl(keys.stats(keys.end_day(int(time.time() * 1000)))) > 30 * 86_400


async def test_the_api_and_the_console_see_the_same_chat(parley: Parley) -> None:
    await answered(parley, "Hello")
    chat_id = (await parley.chat_of())["chat_id"]
    csrf = await sign_in(parley)
    assert (await parley.api("PATCH", f"/update-chat/{chat_id}", json={"agent_paused": True})).status == 200
    page = await (await parley.client.get(f"/console/chats/{chat_id}")).text()
    assert "Resume the agent" in page and "needs a human" in page
    assert (await post(parley, f"/console/chats/{chat_id}/resume", {"csrf": csrf})).status == 303
    assert (await parley.chat_of())["agent_paused"] is False
    assert await parley.redis.zscore(keys.timers(keys.shard_of(chat_id)), chat_id) is not None   # silence clock on
    empty = await post(parley, f"/console/chats/{chat_id}/send", {"csrf": csrf, "content": "  "})
    assert empty.status == 422 and "content: empty" in await empty.text()
    assert (await post(parley, f"/console/chats/{chat_id}/end", {"csrf": csrf})).status == 303
    ended = await (await parley.api("GET", f"/get-chat/{chat_id}")).json()
    assert ended["chat_status"] == "ended" and ended["disconnection_reason"] == "manual_stopped"
    again = await post(parley, f"/console/chats/{chat_id}/end", {"csrf": csrf})
    assert again.status == 409 and "has already ended" in await again.text()


async def test_opt_outs_and_publishing_need_admin(parley: Parley) -> None:
    assert (await parley.text("STOP")).status == 200
    await parley.idle()
    csrf = await sign_in(parley, WRITE_KEY)
    listed = await (await parley.client.get("/console/opt-outs?q=555-0123")).text()
    assert "+1 415-555-0123" in listed and "needs an admin key" in listed
    data = {"csrf": csrf, "from_number": AGENT_NUMBER, "to_number": USER, "consent": "texted START"}
    assert (await post(parley, "/console/opt-outs/clear", data)).status == 403
    publish = await post(parley, "/console/agents/frontdesk/publish", {"csrf": csrf, "version": "0"})
    assert publish.status == 403
    csrf = await sign_in(parley)
    missing = await post(parley, "/console/opt-outs/clear", {**data, "csrf": csrf, "consent": ""})
    assert missing.status == 422 and "consent: required" in await missing.text()
    assert (await post(parley, "/console/opt-outs/clear", {**data, "csrf": csrf})).status == 303
    assert (await parley.api("GET", "/list-opt-outs")).status == 200
    assert await (await parley.api("GET", "/list-opt-outs")).json() == []
    declared = await post(parley, "/console/agents/frontdesk/publish", {"csrf": csrf, "version": "0"})
    assert declared.status == 409 and "read-only here" in await declared.text()


async def test_named_operators_sign_in_with_a_password(make_parley: MakeParley, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
    main(["console-user", "alice", "--role", "write"])
    entry = json.loads(capsys.readouterr().out)
    assert entry["alice"]["role"] == "write" and "correct horse" not in json.dumps(entry)
    parley = await make_parley(console_users=entry)
    login = await parley.client.get("/console/login")
    token = csrf_of(await login.text())
    for name, password in (("alice", "wrong password!"), ("bob", "correct horse battery")):
        refused = await post(parley, "/console/login", {"csrf": token, "name": name, "api_key": password})
        assert refused.status == 401 and "do not match" in await refused.text()
    signed = await post(parley, "/console/login", {"csrf": token, "name": "alice", "api_key": "correct horse battery"})
    assert signed.status == 303
    page = await (await parley.client.get("/console/chats")).text()
    assert "alice (write)" in page
    with pytest.raises(ValidationError, match="expected a password hash"):
        Settings.model_validate({"console_users": {"bob": {"role": "read", "password": "plain text"}}})


async def test_the_list_pages_back_through_older_conversations(parley: Parley,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.console.chats.PAGE", 1)
    await answered(parley, "first")
    first = (await parley.chat_of())["chat_id"]
    before = len(parley.twilio.messages)
    assert (await parley.text("second", user="+14155550999")).status == 200
    await parley.twilio.wait_for(before + 1)
    await parley.idle()
    second = (await parley.chat_of(user="+14155550999"))["chat_id"]
    await sign_in(parley)
    newest = await (await parley.client.get("/console/chats")).text()
    assert second in newest and first not in newest
    older = re.search(r'<a href="([^"]+)">Older conversations</a>', newest)
    assert older
    page = await (await parley.client.get(older.group(1).replace("&amp;", "&"))).text()
    assert first in page and second not in page and "Older conversations" not in page
    broken = await parley.client.get("/console/chats?after=nonsense")
    assert broken.status == 422 and "pagination_key" in await broken.text()


async def test_a_flow_chat_shows_its_node_and_folds_its_transitions(make_parley: MakeParley) -> None:
    parley = await started(make_parley, BOOKING, BOOKS)
    await answered(parley, "hello")
    await answered(parley, "I want to book")
    chat_id = (await parley.chat_of())["chat_id"]
    await sign_in(parley)
    page = await (await parley.client.get(f"/console/chats/{chat_id}")).text()
    assert re.search(r'<dd id="current-node">Ask day</dd>', page)
    assert re.search(r'<li class="folded"><details><summary>Node: Greeting → Ask day</summary>', page)
    agent = await parley.client.get("/console/agents/frontdesk")
    text = await agent.text()
    assert agent.status == 200 and "Its conversation-flow" in text
    assert "&#34;start_node_id&#34;: &#34;greet&#34;" in text
    listing = await (await parley.client.get("/console/agents")).text()
    assert "conversation-flow" in listing


def test_reply_latency_percentiles_come_from_the_buckets() -> None:
    tally = Tally()
    for ms in (300,) * 18 + (9_000, 70_000):
        tally.latency(ms, at_ms=1_800_000_000_000)
    counted = tally.pending()
    [day] = {day for day, _ in counted}
    parsed = Day.parse({field: str(n) for (_, field), n in counted.items()})
    assert day == "2027-01-15" and parsed.percentile(0.5) == 0.5 and parsed.percentile(0.95) == 13.0
    assert parsed.percentile(0.99) == 120.0 and Day().percentile(0.5) is None


def test_counts_fall_in_the_utc_hour_and_day_they_happened_in() -> None:
    tally = Tally()
    midnight = 1_800_057_600_000                     # 2027-01-16 00:00:00 UTC
    for at_ms in (midnight - 1, midnight, midnight + 3_599_999, midnight + 3_600_000, midnight - 1):
        tally.add("in:+14155550100", at_ms=at_ms)
    assert tally.pending() == {("2027-01-15", "23:in:+14155550100"): 2, ("2027-01-16", "00:in:+14155550100"): 2,
                               ("2027-01-16", "01:in:+14155550100"): 1}


async def test_a_chat_shows_the_knowledge_each_turn_used(make_parley: MakeParley) -> None:
    parley, kb_id = await answering(make_parley, {"knowledge_base_ids": [KB]})
    await answered(parley, "How much is a cleaning?")
    await answered(parley, "What is the capital of France?")
    chat_id = (await parley.chat_of())["chat_id"]
    await sign_in(parley)
    page = await (await parley.client.get(f"/console/chats/{chat_id}")).text()
    section = page[page.index('<h2 id="k-title">Knowledge used</h2>'):page.index('<h2 id="a-title">')]
    newest, oldest = section.split("<details")[1:]
    assert "“What is the capital of France?” · 0 chunks" in newest and "Nothing relevant was found." in newest
    assert "“How much is a cleaning?” · 1 chunk<" in oldest
    assert "<strong>Prices</strong>" in oldest and kb_id in oldest and "A routine cleaning costs $120." in oldest
