"""Scoped API keys: each role reaches what it should and no more, the webhook key alone signs, a split process
without keys refuses to start, and ``PARLEY_API_KEY`` alone behaves as it always did."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import pytest
from aiohttp import ClientResponse
from pydantic import ValidationError
from retell.lib.webhook_auth import verify as _retell_verify

from service.api.auth import REACHES
from service.api.openapi import document
from service.api.routes import routes
from service.app import create_app
from service.errors import ConfigError
from service.settings import Settings

from .conftest import AGENT_NUMBER, API_KEY, MakeParley, Parley, Receiver, agent_file

retell_verify = cast(Callable[[str, str, str], bool], _retell_verify)

READ, WRITE, HOOK = "key-read-only", "key-write", "key-webhook"
SCOPED = {READ: "read", WRITE: "write", HOOK: "webhook"}   # API_KEY (PARLEY_API_KEY) is the admin key


async def call(parley: Parley, key: str, method: str, path: str, **kwargs: Any) -> ClientResponse:
    return await parley.client.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kwargs)


async def refused(parley: Parley, key: str, method: str, path: str, needs: str, **kwargs: Any) -> None:
    response = await call(parley, key, method, path, **kwargs)
    assert response.status == 403, await response.text()
    body = await response.json()
    assert body["status"] == "error" and needs in body["message"], body


async def new_agent(parley: Parley) -> str:
    llm = await (await call(parley, API_KEY, "POST", "/create-retell-llm", json={"general_prompt": "hi"})).json()
    response = await call(parley, API_KEY, "POST", "/create-chat-agent", json={
        "response_engine": {"type": "retell-llm", "llm_id": llm["llm_id"]}})
    assert response.status == 201, await response.text()
    agent_id: str = (await response.json())["agent_id"]
    return agent_id


async def test_a_read_only_key_reads_and_changes_nothing(make_parley: MakeParley) -> None:
    parley = await make_parley(scoped_api_keys=SCOPED)
    agent_id = await new_agent(parley)
    assert (await call(parley, READ, "GET", f"/get-chat-agent/{agent_id}")).status == 200
    assert (await call(parley, READ, "GET", "/get-chat/chat_none")).status == 404     # allowed: no such chat
    assert (await call(parley, READ, "POST", "/v3/list-chats", json={})).status == 200  # a list, POST by design
    assert (await call(parley, READ, "POST", "/v2/list-agents")).status == 200
    assert (await call(parley, READ, "GET", "/list-opt-outs")).status == 200
    await refused(parley, READ, "POST", "/create-chat", "needs a key with the role write or admin",
                  json={"agent_id": "frontdesk"})
    await refused(parley, READ, "POST", "/create-sms-chat", "this API key's role is 'read'",
                  json={"from_number": AGENT_NUMBER, "to_number": "+14155550100"})
    await refused(parley, READ, "PATCH", "/end-chat/chat_none", "write or admin")
    await refused(parley, READ, "DELETE", f"/delete-chat-agent/{agent_id}", "needs a key with the role admin")
    assert (await call(parley, API_KEY, "GET", f"/get-chat-agent/{agent_id}")).status == 200   # still there
    assert await parley.chat_ids() == []


async def test_a_write_key_runs_chats_but_manages_nothing(make_parley: MakeParley) -> None:
    parley = await make_parley(scoped_api_keys=SCOPED)
    created = await call(parley, WRITE, "POST", "/create-chat", json={"agent_id": "frontdesk"})
    assert created.status == 201, await created.text()
    chat_id = (await created.json())["chat_id"]
    reply = await call(parley, WRITE, "POST", "/create-chat-completion", json={"chat_id": chat_id, "content": "hi"})
    assert reply.status == 201, await reply.text()
    assert (await call(parley, WRITE, "PATCH", f"/end-chat/{chat_id}")).status == 204
    assert (await call(parley, WRITE, "GET", f"/get-chat/{chat_id}")).status == 200
    await refused(parley, WRITE, "POST", "/create-retell-llm", "needs a key with the role admin",
                  json={"general_prompt": "hi"})
    await refused(parley, WRITE, "POST", "/create-chat-agent", "admin",
                  json={"response_engine": {"type": "retell-llm", "llm_id": "llm_x"}})
    await refused(parley, WRITE, "POST", "/import-phone-number", "admin", json={"phone_number": "+15035550142"})
    await refused(parley, WRITE, "POST", "/clear-opt-out", "admin", json={})
    await refused(parley, WRITE, "DELETE", f"/delete-chat/{chat_id}", "admin")
    assert (await call(parley, API_KEY, "DELETE", f"/delete-chat/{chat_id}")).status == 204


async def test_an_admin_key_manages_agents(make_parley: MakeParley) -> None:
    parley = await make_parley(scoped_api_keys=SCOPED)
    agent_id = await new_agent(parley)
    await refused(parley, WRITE, "DELETE", f"/delete-chat-agent/{agent_id}", "admin")
    assert (await call(parley, API_KEY, "DELETE", f"/delete-chat-agent/{agent_id}")).status == 204
    assert (await call(parley, API_KEY, "GET", f"/get-chat-agent/{agent_id}")).status == 404


async def test_the_webhook_key_and_unknown_keys_call_nothing(make_parley: MakeParley) -> None:
    parley = await make_parley(scoped_api_keys=SCOPED)
    await refused(parley, HOOK, "GET", "/get-chat/chat_none", "webhook-signing key")
    await refused(parley, HOOK, "POST", "/v3/list-chats", "webhook-signing key", json={})
    for headers in ({}, {"Authorization": "Bearer key-unknown"}, {"Authorization": f"Basic {READ}"}):
        response = await parley.client.get("/get-chat/chat_none", headers=headers)
        assert response.status == 401
        assert (await response.json())["status"] == "error"
    # An unknown route is still a 404 for any valid key, not a 403.
    assert (await call(parley, READ, "GET", "/no-such-route")).status == 404


async def test_events_and_chat_inbound_are_signed_with_the_webhook_key_only(
    make_parley: MakeParley, receiver: Receiver,
) -> None:
    receiver.answers = [(200, {"chat_inbound": {}})]
    numbers = [{"phone_number": AGENT_NUMBER, "inbound_sms_webhook_url": receiver.url,
                "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]
    parley = await make_parley(agent=agent_file(webhook_url=receiver.url, webhook_events=["chat_started"]),
                               numbers=numbers, scoped_api_keys=SCOPED)
    await parley.text("hello")
    await receiver.wait_for(2)
    assert [b["event"] for b in receiver.bodies()] == ["chat_inbound", "chat_started"]
    for headers, raw in receiver.received:
        signature = headers["X-Retell-Signature"]
        assert retell_verify(raw.decode(), HOOK, signature), "retell-sdk rejects it with the webhook key"
        for other in (API_KEY, READ, WRITE):
            assert not retell_verify(raw.decode(), other, signature), f"{other} verifies it too"


async def test_parley_api_keys_alone_with_its_webhook_key(make_parley: MakeParley, receiver: Receiver) -> None:
    parley = await make_parley(agent=agent_file(webhook_url=receiver.url, webhook_events=["chat_started"]),
                               api_keys=[], scoped_api_keys={"key-admin": "admin", HOOK: "webhook"})
    assert (await call(parley, API_KEY, "GET", "/get-chat/chat_none")).status == 401   # PARLEY_API_KEY is unset
    response = await call(parley, "key-admin", "POST", "/create-retell-llm", json={"general_prompt": "hi"})
    assert response.status == 201, await response.text()
    await parley.text("hello")
    await receiver.wait_for(1)
    headers, raw = receiver.received[0]
    assert retell_verify(raw.decode(), HOOK, headers["X-Retell-Signature"])
    assert not retell_verify(raw.decode(), "key-admin", headers["X-Retell-Signature"])


async def test_parley_api_key_alone_is_admin_and_its_first_key_signs(
    make_parley: MakeParley, receiver: Receiver,
) -> None:
    parley = await make_parley(agent=agent_file(webhook_url=receiver.url, webhook_events=["chat_started"]),
                               api_keys=["first-key", API_KEY])
    for key in ("first-key", API_KEY):
        response = await call(parley, key, "POST", "/create-retell-llm", json={"general_prompt": "hi"})
        assert response.status == 201, await response.text()
    await parley.text("hello")
    await receiver.wait_for(1)
    headers, raw = receiver.received[0]
    assert retell_verify(raw.decode(), "first-key", headers["X-Retell-Signature"])
    assert not retell_verify(raw.decode(), API_KEY, headers["X-Retell-Signature"])


def test_a_split_process_without_keys_refuses_to_start(tmp_path: Any) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    settings = Settings(agents_dir=agents, api_keys=[])
    for split in ({"workers": False}, {"web_routes": False}):
        with pytest.raises(ConfigError, match="need API keys"):
            create_app(settings, **split)
    create_app(settings)   # a whole `parley serve` makes a key up for its run, as before
    scoped = Settings.model_validate({"agents_dir": agents, "scoped_api_keys": {"k": "read", "h": "webhook"}})
    create_app(scoped, workers=False)


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("PARLEY_API_KEY", "PARLEY_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_parley_api_keys_is_a_json_object_of_roles(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_from({"PARLEY_API_KEYS": json.dumps({"sekrit-r": "read", "sekrit-w": "write", "h": "webhook"}),
                       "PARLEY_API_KEY": "a1, a2"}, monkeypatch)
    assert [(k.key.get_secret_value(), k.role) for k in s.api_key_roles()] == [
        ("a1", "admin"), ("a2", "admin"), ("sekrit-r", "read"), ("sekrit-w", "write"), ("h", "webhook")]
    webhook = s.webhook_key()
    assert webhook is not None and webhook.get_secret_value() == "h"
    assert "sekrit" not in repr(s) and "sekrit" not in str(s.model_dump())   # secrets stay secret
    legacy = settings_from({"PARLEY_API_KEY": "a1, a2"}, monkeypatch).webhook_key()
    assert legacy is not None and legacy.get_secret_value() == "a1"
    no_webhook_key = settings_from({"PARLEY_API_KEYS": '{"r": "read"}', "PARLEY_API_KEY": "a1"}, monkeypatch)
    assert (key := no_webhook_key.webhook_key()) is not None and key.get_secret_value() == "a1"


@pytest.mark.parametrize(("value", "message"), [
    ("r:read", "not valid JSON"),
    ('["r"]', "expected a JSON object"),
    ('{"r": "owner", "h": "webhook"}', "key #1 has the role 'owner'; a role is one of admin, write, read, webhook"),
    ('{"r": "read", "r": "admin", "h": "webhook"}', "key #2 is given twice"),
    ('{"r x": "read", "h": "webhook"}', "key #1 is empty or contains whitespace"),
    ('{"h1": "webhook", "h2": "webhook"}', 'more than one key has the role "webhook"'),
    ('{"r": "read"}', 'PARLEY_API_KEYS has no key with the role "webhook"'),
    ('{"a1": "read", "h": "webhook"}', "also in PARLEY_API_KEY"),
])
def test_bad_parley_api_keys_are_refused_clearly(value: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARLEY_API_KEY", raising=False)
    monkeypatch.setenv("PARLEY_API_KEYS", value)
    if "also in" in message:
        monkeypatch.setenv("PARLEY_API_KEY", "a1")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert message in str(caught.value)
    for key in ("r x", "h1", '"r"', '"a1"'):   # errors number the keys, never show them (nor the raw input)
        assert key not in str(caught.value)


def test_every_api_route_has_the_scope_its_verb_suggests() -> None:
    for route in routes():
        if route.public:
            continue
        lists = "/list-" in route.path or route.path.startswith("/v3/list-")
        if route.scope == "read":
            assert route.method == "GET" or lists, f"{route.method} {route.path} changes something but is read"
        elif route.method == "GET":
            raise AssertionError(f"GET {route.path} only reads but needs {route.scope}")
    assert REACHES["webhook"] == frozenset()


def test_the_openapi_document_names_each_routes_scope() -> None:
    spec = document(routes())
    assert "PARLEY_API_KEYS" in spec["components"]["securitySchemes"]["bearer"]["description"]
    assert spec["paths"]["/create-chat"]["post"]["security"] == [{"bearer": ["write"]}]
    assert spec["paths"]["/v3/list-chats"]["post"]["security"] == [{"bearer": ["read"]}]
    assert spec["paths"]["/delete-chat-agent/{agent_id}"]["delete"]["security"] == [{"bearer": ["admin"]}]
    assert "403" in spec["paths"]["/create-chat"]["post"]["responses"]
    assert "security" not in spec["paths"]["/metrics"]["get"]
