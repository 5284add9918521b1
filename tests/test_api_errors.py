"""Every error the REST API answers: the status, Retell's envelope, and a message that says what was expected.
Nothing is half-written when a request is refused."""

from __future__ import annotations

from typing import Any

import pytest

from service.storage import keys

from .conftest import AGENT_NUMBER, OTHER_ACCOUNT_SID, OTHER_NUMBER, USER, MakeParley, Parley, agent_file


@pytest.fixture
async def parley(make_parley: MakeParley) -> Parley:
    return await make_parley()


async def expect(parley: Parley, method: str, path: str, status: int, message: str, **kwargs: Any) -> None:
    response = await parley.api(method, path, **kwargs)
    body = await response.json()
    assert (response.status, body["status"]) == (status, "error"), body
    assert message in body["message"], body["message"]


async def test_malformed_json_is_400(parley: Parley) -> None:
    await expect(parley, "POST", "/create-chat", 400, "not valid JSON", data=b"{nope",
                 headers={"Content-Type": "application/json"})
    await expect(parley, "POST", "/create-chat", 400, "expected a JSON object, got list", json=[1])


@pytest.mark.parametrize(("method", "path", "message"), [
    ("GET", "/get-chat/chat_nope", "chat 'chat_nope' not found"),
    ("PATCH", "/end-chat/chat_nope", "chat 'chat_nope' not found"),
    ("DELETE", "/delete-chat/chat_nope", "not found"),
    ("GET", "/get-chat-agent/nobody", "agent 'nobody' not found"),
    ("GET", "/get-chat-agent/frontdesk?version=9", "agent 'frontdesk' version 9 not found"),
    ("GET", "/get-retell-llm/llm_nope", "retell llm 'llm_nope' not found"),
    ("GET", "/get-phone-number/%2B15005550000", "phone number '+15005550000' not found"),
    ("GET", "/get-chat-agent-versions/nobody", "not found"),
])
async def test_unknown_ids_are_404(parley: Parley, method: str, path: str, message: str) -> None:
    await expect(parley, method, path, 404, message)


@pytest.mark.parametrize(("method", "path", "body", "message"), [
    ("PATCH", "/update-chat-agent/frontdesk", {"agent_name": "x"}, "frontdesk.yaml"),
    ("DELETE", "/delete-chat-agent/frontdesk", None, "frontdesk.yaml"),
    ("PATCH", "/update-retell-llm/llm_frontdesk", {"general_prompt": "x"}, "frontdesk.yaml"),
    ("DELETE", "/delete-retell-llm/llm_frontdesk", None, "frontdesk.yaml"),
    ("PATCH", f"/update-phone-number/{AGENT_NUMBER}", {"nickname": "x"}, "phone-numbers.yaml"),
    ("DELETE", f"/delete-phone-number/{AGENT_NUMBER}", None, "phone-numbers.yaml"),
])
async def test_objects_from_files_are_read_only(
    parley: Parley, method: str, path: str, body: dict[str, Any] | None, message: str,
) -> None:
    await expect(parley, method, path, 409, message, json=body)
    assert (await (await parley.api("GET", "/get-chat-agent/frontdesk")).json())["version"] == 0


async def test_conflicting_states_are_409(parley: Parley) -> None:
    chat = await (await parley.api("POST", "/create-chat", json={"agent_id": "frontdesk"})).json()
    assert (await parley.api("PATCH", f"/end-chat/{chat['chat_id']}")).status == 204
    await expect(parley, "PATCH", f"/end-chat/{chat['chat_id']}", 409, "already ended")
    await expect(parley, "POST", "/create-chat-completion", 409, "has ended",
                 json={"chat_id": chat["chat_id"], "content": "hi"})
    await expect(parley, "POST", "/import-phone-number", 409, "already imported", json={"phone_number": AGENT_NUMBER})
    await parley.text("hello")
    await parley.twilio.wait_for(1)
    sms = await parley.chat_of()
    await expect(parley, "POST", "/create-chat-completion", 409, "SMS chat",
                 json={"chat_id": sms["chat_id"], "content": "hi"})


async def test_an_agent_in_use_by_a_number_cannot_be_deleted(parley: Parley) -> None:
    llm = await (await parley.api("POST", "/create-retell-llm", json={"general_prompt": "hi"})).json()
    agent = await (await parley.api("POST", "/create-chat-agent", json={
        "response_engine": {"type": "retell-llm", "llm_id": llm["llm_id"]}})).json()
    await parley.api("POST", "/import-phone-number", json={
        "phone_number": OTHER_NUMBER, "inbound_sms_agents": [{"agent_id": agent["agent_id"], "weight": 1}]})
    await expect(parley, "DELETE", f"/delete-chat-agent/{agent['agent_id']}", 409, OTHER_NUMBER)
    await expect(parley, "DELETE", f"/delete-retell-llm/{llm['llm_id']}", 409, agent["agent_id"])


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/create-sms-chat", {"from_number": AGENT_NUMBER, "to_number": "555-0100"},
     "to_number: Value error, '555-0100' is not an E.164 number"),
    ("/create-sms-chat", {"from_number": "+15005550000", "to_number": USER},
     "from_number: +15005550000 is not a number"),
    ("/create-sms-chat", {"from_number": AGENT_NUMBER, "to_number": USER},
     "override_agent_id: required, since +15035550100 has no outbound_sms_agents"),
    ("/create-sms-chat", {"from_number": AGENT_NUMBER, "to_number": USER, "override_agent_id": "ghost"},
     "override_agent_id: agent 'ghost' not found"),
    ("/create-sms-chat", {"from_number": AGENT_NUMBER, "to_number": "+33612345678", "override_agent_id": "frontdesk"},
     "to_number: +33612345678 is in FR, and +15035550100 may send only to US"),
    ("/create-chat", {"agent_id": "ghost"}, "agent_id: agent 'ghost' not found"),
    ("/create-chat", {"agent_id": "frontdesk", "agent_version": "prod"}, "agent_version"),
    ("/create-chat", {"agent_id": "frontdesk", "surprise": 1}, "surprise: Extra inputs are not permitted"),
    ("/create-chat-completion", {"chat_id": "x"}, "content: Field required"),
    ("/import-phone-number", {"phone_number": OTHER_NUMBER, "inbound_sms_agents": [
        {"agent_id": "frontdesk", "weight": 0.4}]}, "inbound_sms_agents weights must sum to 1, not 0.4"),
    ("/import-phone-number", {"phone_number": OTHER_NUMBER, "inbound_sms_agents": [{"agent_id": "ghost", "weight": 1}]},
     "inbound_sms_agents.0.agent_id: no chat agent 'ghost'"),
    ("/import-phone-number", {"phone_number": OTHER_NUMBER, "twilio_account_sid": "AC" + "c" * 32},
     "no auth token for AC" + "c" * 32),
    ("/create-chat-agent", {"agent_name": "no engine"}, "needs response_engine"),
    ("/create-chat-agent", {"response_engine": {"type": "retell-llm", "llm_id": "llm_ghost"}},
     "response_engine.llm_id: no retell llm 'llm_ghost'"),
    ("/create-chat-agent", {"response_engine": {"type": "retell-llm", "llm_id": "llm_frontdesk"},
                            "timezone": "Mars/Base"}, "timezone"),
    ("/create-retell-llm", {"model_temperature": 7}, "model_temperature: Input should be less than or equal to 2"),
    ("/v3/list-chats", {"filter_criteria": {"teleport": {"type": "number", "op": "gt", "value": 60000}}},
     "filter_criteria.teleport: Extra inputs are not permitted"),
    ("/v3/list-chats", {"pagination_key": "garbage"}, "pagination_key: not a key returned"),
    ("/v3/list-chats", {"limit": 5000}, "limit: Input should be less than or equal to 1000"),
])
async def test_invalid_bodies_are_422_and_write_nothing(
    parley: Parley, path: str, body: dict[str, Any], message: str,
) -> None:
    before = sorted([k async for k in parley.redis.scan_iter(match="parley:*")])
    await expect(parley, "POST", path, 422, message, json=body)
    assert sorted([k async for k in parley.redis.scan_iter(match="parley:*")]) == before


async def test_an_opted_out_recipient_is_refused(make_parley: MakeParley) -> None:
    numbers = [{"phone_number": AGENT_NUMBER, "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}],
                "outbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]
    parley = await make_parley(numbers=numbers)
    await parley.redis.set(keys.optout(keys.Conversation(AGENT_NUMBER, USER)), 1)
    await expect(parley, "POST", "/create-sms-chat", 422, "opted out",
                 json={"from_number": AGENT_NUMBER, "to_number": USER})
    assert parley.twilio.messages == [] and await parley.chat_ids() == []


async def test_a_first_message_twilio_refuses_is_502_and_ends_the_chat(make_parley: MakeParley) -> None:
    numbers = [{"phone_number": AGENT_NUMBER, "outbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]
    parley = await make_parley(numbers=numbers, agent=agent_file(retell_llm={"begin_message": "Hello!"}))
    parley.twilio.errors[USER] = (400, 21211)
    await expect(parley, "POST", "/create-sms-chat", 502, "error 21211",
                 json={"from_number": AGENT_NUMBER, "to_number": USER})
    [chat_id] = await parley.chat_ids()
    chat = await (await parley.api("GET", f"/get-chat/{chat_id}")).json()
    assert chat["chat_status"] == "ended" and chat["disconnection_reason"] == "sms_send_failed"


async def test_unknown_numbers_in_other_accounts_need_their_token(make_parley: MakeParley) -> None:
    parley = await make_parley()
    response = await parley.api("POST", "/import-phone-number", json={
        "phone_number": OTHER_NUMBER, "twilio_account_sid": OTHER_ACCOUNT_SID})
    assert response.status == 201
