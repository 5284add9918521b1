"""Bad input at the HTTP edge is the client's error, never a 500 or a 503 that blames Redis: malformed ids
(404, no Redis key built from them), JSON nested too deep (422), headers that are not UTF-8 (401/400), bodies
that arrive too slowly (408), Twilio bodies over the cap whatever the transfer encoding (413), and Redis
refusing a command (WRONGTYPE: a bug, 500, logged)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import pytest

from service.api.bodies import MAX_JSON_DEPTH
from service.channels.twilio.form import MAX_BODY_BYTES
from service.channels.twilio.signature import sign
from service.storage import keys

from .conftest import ACCOUNT_SID, AGENT_NUMBER, API_KEY, AUTH_TOKEN, PUBLIC_URL, USER, MakeParley, Parley


@pytest.fixture
async def parley(make_parley: MakeParley) -> Parley:
    return await make_parley(body_timeout_s=0.3)


async def raw_request(parley: Parley, head: bytes, body: bytes = b"", *, within_s: float = 4.0) -> tuple[int, bytes]:
    """Send bytes as they are (no client library re-encodes them); the status and body of the answer."""
    url = parley.client.make_url("/")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(head + b"\r\n" + body)
        async with asyncio.timeout(within_s):
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answer = await reader.readexactly(length)
    finally:
        writer.close()
    return int(status_line.split()[1]), answer


def head(method: str, path: str, *headers: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: parley.test", b"Connection: close", *headers]
    return b"".join(line + b"\r\n" for line in lines)


def twilio_form(body: str, sid: str = "SM" + "1" * 32) -> tuple[dict[str, str], dict[str, str]]:
    """A signed inbound form and its headers."""
    form = {"MessageSid": sid, "AccountSid": ACCOUNT_SID, "From": USER, "To": AGENT_NUMBER, "Body": body}
    return form, {"X-Twilio-Signature": sign(PUBLIC_URL + "/twilio/sms", form, AUTH_TOKEN),
                  "Content-Type": "application/x-www-form-urlencoded"}


async def conversation_keys(parley: Parley) -> list[str]:
    return sorted([k async for k in parley.redis.scan_iter(match="parley:{*}:conv:*")])


# 1. Ids ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "message"), [
    ("GET", "/get-chat/{chat}:messages", "a chat id is chat_ and 32 lowercase hex digits"),
    ("GET", "/get-chat/{chat}:delivery", "a chat id is chat_ and 32 lowercase hex digits"),
    ("PATCH", "/update-chat/{chat}:lock", "a chat id is chat_"),
    ("PATCH", "/end-chat/{chat}:messages", "a chat id is chat_"),
    ("DELETE", "/delete-chat/{chat}:messages", "a chat id is chat_"),
    ("PUT", "/rerun-chat-analysis/{chat}:messages", "a chat id is chat_"),
    ("GET", "/list-chat?pagination_key={chat}:messages", "a chat id is chat_"),
    ("GET", "/get-chat-agent/frontdesk:x", "an agent id is 1 to 128 letters"),
    ("PATCH", "/update-chat-agent/a%20b", "an agent id is 1 to 128 letters"),
    ("DELETE", "/delete-chat-agent/frontdesk:x", "an agent id is 1 to 128 letters"),
    ("GET", "/get-chat-agent-versions/frontdesk:x", "an agent id is 1 to 128 letters"),
    ("GET", "/get-retell-llm/llm_frontdesk:x", "an LLM id is 1 to 128 letters"),
    ("PATCH", "/update-retell-llm/llm_frontdesk:x", "an LLM id is 1 to 128 letters"),
    ("DELETE", "/delete-retell-llm/llm_frontdesk:x", "an LLM id is 1 to 128 letters"),
    ("GET", "/get-phone-number/+1503:5550100", "a phone number is E.164"),
    ("PATCH", "/update-phone-number/nope", "a phone number is E.164"),
    ("DELETE", "/delete-phone-number/nope", "a phone number is E.164"),
])
async def test_a_malformed_id_in_a_path_is_404_saying_the_form(
    parley: Parley, method: str, path: str, message: str,
) -> None:
    chat = await (await parley.api("POST", "/create-chat", json={"agent_id": "frontdesk"})).json()
    response = await parley.api(method, path.format(chat=chat["chat_id"]), json={})
    body = await response.json()
    assert (response.status, body["status"]) == (404, "error"), body
    assert "not found" in body["message"] and message in body["message"], body["message"]


def same_partition_chat_id(suffix: str) -> str:
    """A chat id whose key and the key of ``<id><suffix>`` fall in one partition, so that ``<id><suffix>``,
    used as an id, would address the chat's own ``suffix`` key (1 id in 16 does)."""
    n = 0
    while keys.shard_of(chat_id := f"chat_{n:032x}") != keys.shard_of(chat_id + suffix):
        n += 1
    return chat_id


async def test_an_id_naming_another_key_of_the_chat_is_404_not_503_or_500(parley: Parley) -> None:
    listed = same_partition_chat_id(":messages")
    await parley.redis.rpush(keys.chat_messages(listed), '{"role": "user", "content": "hi"}')   # a LIST
    hashed = same_partition_chat_id(":delivery")
    await parley.redis.hset(keys.delivery(hashed), "SM1", '{"status": "sent"}')                  # not a chat's hash
    for path in (f"/get-chat/{listed}:messages", f"/get-chat/{hashed}:delivery"):
        response = await parley.api("GET", path)
        assert response.status == 404, await response.text()


@pytest.mark.parametrize("path", ["/create-chat-completion", "/send-chat-message"])
async def test_a_malformed_chat_id_in_a_body_is_404(parley: Parley, path: str) -> None:
    chat = await (await parley.api("POST", "/create-chat", json={"agent_id": "frontdesk"})).json()
    asked = len(parley.llm.requests)
    response = await parley.api("POST", path, json={"chat_id": chat["chat_id"] + ":messages", "content": "hi"})
    assert response.status == 404
    assert "a chat id is chat_" in (await response.json())["message"]
    assert len(parley.llm.requests) == asked


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/create-chat", {"agent_id": "frontdesk:x"}, "agent_id: agent 'frontdesk:x' not found"),
    ("/create-chat-agent", {"agent_id": "frontdesk:x", "response_engine": {"llm_id": "llm_frontdesk"}},
     "agent_id: String should match pattern"),
    ("/create-chat-agent", {"response_engine": {"llm_id": "llm_frontdesk:x"}},
     "response_engine.llm_id: String should match pattern"),
    ("/create-retell-llm", {"llm_id": "llm:x"}, "llm_id: String should match pattern"),
    ("/create-retell-llm", {"llm_id": {}}, "llm_id: Input should be a valid string"),
    ("/create-chat-agent", {"agent_id": 7, "response_engine": {"llm_id": "llm_frontdesk"}},
     "agent_id: Input should be a valid string"),
    ("/v3/list-chats", {"filter_criteria": {"agent": [{"agent_id": "frontdesk:x"}]}},
     "filter_criteria.agent.0.agent_id: String should match pattern"),
    ("/v3/list-chats", {"include_total": 0}, "include_total: Input should be a valid boolean"),
    ("/import-phone-number", {"phone_number": "+15035550111", "inbound_sms_agents": [{"agent_id": "front:desk"}]},
     "inbound_sms_agents.0.agent_id: String should match pattern"),
])
async def test_a_malformed_id_or_a_coerced_type_in_a_body_is_422(
    parley: Parley, path: str, body: dict[str, Any], message: str,
) -> None:
    response = await parley.api("POST", path, json=body)
    assert response.status == 422
    assert message in (await response.json())["message"]


async def test_a_status_callback_for_a_malformed_chat_id_records_nothing(parley: Parley) -> None:
    form = {"MessageSid": "SM" + "2" * 32, "MessageStatus": "delivered", "From": AGENT_NUMBER, "To": USER,
            "AccountSid": ACCOUNT_SID}
    path = "/twilio/status?chat_id=chat_x:messages"
    response = await parley.client.post(path, data=urlencode(form), headers={
        "X-Twilio-Signature": sign(PUBLIC_URL + path, form, AUTH_TOKEN),
        "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 204
    assert [k async for k in parley.redis.scan_iter(match="parley:*chat_x*")] == []


async def test_an_undeclared_method_is_405_naming_the_allowed_ones(parley: Parley) -> None:
    response = await parley.api("DELETE", "/get-chat/chat_" + "0" * 32)
    assert response.status == 405
    assert response.headers["Allow"] == "GET"
    assert (await response.json())["status"] == "error"


# 2. JSON depth -----------------------------------------------------------------------------------------------

def nested(levels: int) -> dict[str, Any]:
    """``{"a": {"a": ... 1}}``, ``levels`` objects deep."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value  # type: ignore[no-any-return]


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 300, 1_024, 5_000])
async def test_a_body_nested_too_deep_is_422_naming_the_limit(parley: Parley, levels: int) -> None:
    body = b'{"agent_id": "frontdesk", "metadata": ' + b'{"a": ' * (levels - 1) + b"1" + b"}" * levels
    response = await parley.api("POST", "/create-chat", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 422
    assert f"at most {MAX_JSON_DEPTH}" in (await response.json())["message"]
    assert await parley.chat_ids() == []


async def test_a_body_at_the_depth_limit_is_taken(parley: Parley) -> None:
    response = await parley.api("POST", "/create-chat",
                                json={"agent_id": "frontdesk", "metadata": nested(MAX_JSON_DEPTH - 1)})
    assert response.status == 201, await response.text()


# 3. Headers that are not UTF-8 -------------------------------------------------------------------------------

async def test_an_authorization_header_that_is_not_utf8_is_401(parley: Parley) -> None:
    for value in (b"Bearer \xff\xfe", b"\xc3\x28 " + API_KEY.encode(), b"Bearer " + API_KEY.encode() + b"\x80"):
        status, body = await raw_request(parley, head("GET", "/list-chat-agents", b"Authorization: " + value))
        assert status == 401, body
        assert b"Authorization" in body


async def test_other_text_that_is_not_utf8_is_400_not_500(parley: Parley) -> None:
    body = b'{"from_number": "%s", "to_number": "%s", "content": "hi"}' % (AGENT_NUMBER.encode(), USER.encode())
    status, answer = await raw_request(parley, head(
        "POST", "/send-sms", b"Authorization: Bearer " + API_KEY.encode(), b"Idempotency-Key: k-\xff\xfe",
        b"Content-Type: application/json", b"Content-Length: %d" % len(body)), body)
    assert status == 400, answer
    assert b"not valid UTF-8" in answer
    assert parley.twilio.messages == []


async def test_a_twilio_signature_that_is_not_utf8_is_403(parley: Parley) -> None:
    form, headers = twilio_form("hello")
    body = urlencode(form).encode()
    status, answer = await raw_request(parley, head(
        "POST", "/twilio/sms", b"X-Twilio-Signature: \xff\xfe=", b"Content-Type: " + headers["Content-Type"].encode(),
        b"Content-Length: %d" % len(body)), body)
    assert status == 403, answer
    assert await conversation_keys(parley) == []


async def test_a_twilio_form_in_an_unknown_charset_is_400(parley: Parley) -> None:
    form, headers = twilio_form("hello")
    response = await parley.client.post("/twilio/sms", data=urlencode(form), headers={
        **headers, "Content-Type": "application/x-www-form-urlencoded; charset=no-such-charset"})
    assert response.status == 400
    assert await conversation_keys(parley) == []


# 4. Slow bodies, and Redis refusing a command ----------------------------------------------------------------

async def test_an_api_body_that_does_not_arrive_in_time_is_408(parley: Parley) -> None:
    status, answer = await raw_request(parley, head(
        "POST", "/create-chat", b"Authorization: Bearer " + API_KEY.encode(), b"Content-Type: application/json",
        b"Content-Length: 100"), b'{"agent_id": ')
    assert status == 408, answer
    assert b"PARLEY_BODY_TIMEOUT_S" in answer


async def test_a_webhook_body_that_does_not_arrive_in_time_is_408_not_503(parley: Parley) -> None:
    form, headers = twilio_form("hello")
    body = urlencode(form).encode()
    status, answer = await raw_request(parley, head(
        "POST", "/twilio/sms", b"X-Twilio-Signature: " + headers["X-Twilio-Signature"].encode(),
        b"Content-Type: application/x-www-form-urlencoded", b"Content-Length: %d" % len(body)), body[:20])
    assert status == 408, answer
    assert await conversation_keys(parley) == []


async def test_a_slow_webhook_body_does_not_count_against_the_redis_deadline(make_parley: MakeParley) -> None:
    parley = await make_parley(body_timeout_s=3)
    form, headers = twilio_form("hello")
    body = urlencode(form).encode()

    async def trickle() -> AsyncIterator[bytes]:   # half now, half after a while: within the body's bound
        yield body[:40]
        await asyncio.sleep(0.5)
        yield body[40:]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("service.channels.twilio.form.WEBHOOK_TIMEOUT_S", 0.4)
        response = await parley.client.post("/twilio/sms", data=trickle(), headers=headers)
    assert response.status == 200, await response.text()


async def test_wrongtype_from_redis_is_a_logged_500_not_an_outage(
    parley: Parley, caplog: pytest.LogCaptureFixture,
) -> None:
    await parley.redis.set(keys.mailbox(keys.Conversation(AGENT_NUMBER, USER)), "not a list")
    chat_id = "chat_" + "0" * 32
    await parley.redis.set(keys.chat(chat_id), "not a hash")
    with caplog.at_level(logging.ERROR, logger="service.api.http"):
        response = await parley.text("hello")
        assert response.status == 500, await response.text()
        api = await parley.api("GET", f"/get-chat/{chat_id}")
        assert api.status == 500
    assert "storage refused the request (ResponseError)" in (await api.json())["message"]
    refused = [r for r in caplog.records if r.getMessage() == "redis refused a command: a bug"]
    assert len(refused) == 2, refused
    assert all("WRONGTYPE" in r.error for r in refused), [r.error for r in refused]  # type: ignore[attr-defined]


# 5. The Twilio body cap, whatever the transfer encoding ------------------------------------------------------

async def chunked(body: bytes, size: int = 16 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]


async def test_a_chunked_webhook_body_over_the_cap_is_413_and_nothing_is_stored(parley: Parley) -> None:
    form, headers = twilio_form("x" * 1_000_000)
    response = await parley.client.post("/twilio/sms", data=chunked(urlencode(form).encode()), headers=headers)
    assert response.status == 413
    assert str(MAX_BODY_BYTES) in await response.text()
    assert await conversation_keys(parley) == []
    assert parley.llm.requests == []


async def test_a_chunked_webhook_body_under_the_cap_is_taken(parley: Parley) -> None:
    form, headers = twilio_form("hello, in chunks")
    response = await parley.client.post("/twilio/sms", data=chunked(urlencode(form).encode(), 8), headers=headers)
    assert response.status == 200, await response.text()
    await parley.twilio.wait_for(1)
