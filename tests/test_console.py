"""The operator console over HTTP: sign-in, sessions, CSRF, roles, security headers, and the pages' content.
(The browser tests, tests/test_console_browser.py, drive the same pages in Chromium.)"""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import ClientResponse

from service.storage import keys

from .conftest import AGENT_NUMBER, API_KEY, USER, MakeParley, Parley, answered

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
