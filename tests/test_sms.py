"""SMS for voice agents and backends, human takeover, delivery tracking, and compliance (opt-outs, the
daily segment cap, allowed countries), against real Redis and the fake Twilio."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from service.channels.twilio.signature import sign
from service.storage import keys

from .conftest import ACCOUNT_SID, AGENT_NUMBER, AUTH_TOKEN, PUBLIC_URL, USER, MakeParley, Parley, Receiver, agent_file
from .conftest import api_json as api
from .fakes.openai import Call, Completion

NUMBERS = [{"phone_number": AGENT_NUMBER, "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}],
            "outbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]
CALL_TRANSCRIPT = "Agent: I can text you the address.\nUser: Yes please."


@pytest.fixture
async def parley(make_parley: MakeParley) -> Parley:
    return await make_parley(numbers=NUMBERS)



async def test_send_sms_exact_text_opens_a_chat_the_agent_continues(parley: Parley) -> None:
    sent = await api(parley, "POST", "/send-sms", 200, json={
        "from_number": AGENT_NUMBER, "to_number": USER, "content": "We’re at 1200 SE Morrison St, {{user_number}}.",
        "transcript": CALL_TRANSCRIPT})
    assert parley.twilio.messages[0].body == f"We’re at 1200 SE Morrison St, {USER}."   # exact: not sanitised
    assert sent["message_sid"] == parley.twilio.messages[0].sid and sent["encoding"] == "UCS-2"
    assert sent["segments"] == 1 and sent["status"] == "queued" and sent["chat_id"]
    await parley.text("thanks! what time do you open?")
    await parley.twilio.wait_for(2)
    messages = parley.llm.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["system", "system", "assistant", "user"]
    assert "Yes please." in messages[1]["content"]
    assert messages[2]["content"].startswith("We’re at 1200 SE Morrison St")
    await parley.idle()
    chat = await parley.chat_of()
    assert chat["chat_id"] == sent["chat_id"] and chat["direction"] == "outbound"
    assert [m["role"] for m in chat["message_with_tool_calls"]] == ["injected", "agent", "user", "agent"]


async def test_send_sms_from_a_prompt_is_written_by_the_llm(parley: Parley) -> None:
    parley.llm.respond = lambda body: Completion(content="Your visit is Tue at 3 PM – see you!")
    sent = await api(parley, "POST", "/send-sms", 200, json={
        "from_number": AGENT_NUMBER, "to_number": USER, "prompt": "Confirm the visit time agreed on the call.",
        "transcript": [{"role": "agent", "content": "Tuesday at 3?"}, {"role": "user", "content": "Perfect."}]})
    system = parley.llm.requests[0]["messages"][0]["content"]
    assert "Instructions: Confirm the visit time agreed on the call." in system
    assert "User: Perfect." in parley.llm.requests[0]["messages"][1]["content"]
    assert parley.twilio.messages[0].body == "Your visit is Tue at 3 PM - see you!"   # LLM text is sanitised
    assert sent["encoding"] == "GSM-7"


@pytest.mark.parametrize("content", [
    {"sms_content": {"type": "predefined", "text": "Hello from Sunny"}},
    {"sms_content": {"type": "predefined", "content": "Hello from Sunny"}},
])
async def test_retells_sms_content_shapes(parley: Parley, content: dict[str, Any]) -> None:
    await api(parley, "POST", "/send-sms", 200, json={"from_number": AGENT_NUMBER, "to_number": USER, **content})
    assert parley.twilio.messages[0].body == "Hello from Sunny"


@pytest.mark.parametrize(("body", "status", "message"), [
    ({}, 422, "give exactly one of content, prompt or sms_content (got none)"),
    ({"content": "a", "prompt": "b"}, 422, "(got content, prompt)"),
    ({"sms_content": {"type": "inferred"}}, 422, "an inferred sms_content needs a prompt"),
    ({"content": "x" * 1601}, 422, "content: String should have at most 1600 characters"),
    ({"content": "hi", "to_number": "+447700900123"}, 422, "is in GB, and +15035550100 may send only to US"),
    ({"content": "hi", "from_number": "+15035550111"}, 422, "from_number: +15035550111 is not a number"),
])
async def test_send_sms_refuses_bad_requests(parley: Parley, body: dict[str, Any], status: int, message: str) -> None:
    payload = {"from_number": AGENT_NUMBER, "to_number": USER, **body}
    response = await api(parley, "POST", "/send-sms", status, json=payload)
    assert message in response["message"]
    assert parley.twilio.messages == []


async def test_send_sms_is_idempotent(parley: Parley) -> None:
    body = {"from_number": AGENT_NUMBER, "to_number": USER, "content": "Your code is 1234"}
    headers = {"Idempotency-Key": "call-77-code"}
    first, second = await asyncio.gather(api(parley, "POST", "/send-sms", 200, json=body, headers=headers),
                                         api(parley, "POST", "/send-sms", 200, json=body, headers=headers))
    third = await api(parley, "POST", "/send-sms", 200, json=body, headers=headers)
    assert first == second == third
    assert len(parley.twilio.messages) == 1


async def test_every_sending_path_honours_an_opt_out(parley: Parley) -> None:
    chat = await api(parley, "POST", "/create-sms-chat", 200, json={"from_number": AGENT_NUMBER, "to_number": USER})
    await parley.redis.set(keys.optout(keys.Conversation(AGENT_NUMBER, USER)), 1)
    refused = await api(parley, "POST", "/send-sms", 422, json={"from_number": AGENT_NUMBER, "to_number": USER,
                                                                "content": "hi"})
    assert "opted out" in refused["message"]
    refused = await api(parley, "POST", "/send-chat-message", 422, json={"chat_id": chat["chat_id"],
                                                                         "content": "hi"})
    assert "opted out" in refused["message"]
    tool = await api(parley, "POST", "/tools/send-sms", 200, json={
        "name": "send_sms", "args": {"content": "hi"},
        "call": {"direction": "inbound", "from_number": USER, "to_number": AGENT_NUMBER}})
    assert tool["result"].startswith("not sent: to_number: +14155550123 opted out")
    assert len(parley.twilio.messages) == 1   # only the chat's first message, before the opt-out


async def test_the_retell_custom_function_texts_the_caller(parley: Parley) -> None:
    inbound_call = {"call_id": "call_1", "direction": "inbound", "from_number": USER, "to_number": AGENT_NUMBER,
                    "transcript": CALL_TRANSCRIPT}
    result = await api(parley, "POST", "/tools/send-sms", 200, json={
        "name": "send_sms", "args": {"content": "1200 SE Morrison St"}, "call": inbound_call})
    assert result == {"result": "sent: 1200 SE Morrison St"}
    assert (parley.twilio.messages[0].from_, parley.twilio.messages[0].to) == (AGENT_NUMBER, USER)
    outbound_call = {**inbound_call, "direction": "outbound", "from_number": AGENT_NUMBER, "to_number": "+14155550777"}
    await api(parley, "POST", "/tools/send-sms", 200, json={"name": "send_sms", "args": {"content": "hi"},
                                                             "call": outbound_call})
    assert parley.twilio.messages[1].to == "+14155550777"
    bad = await api(parley, "POST", "/tools/send-sms", 200, json={"args": {"content": "x"}, "call": {}})
    assert bad["result"].startswith("not sent:")


def sms_tool(**extra: Any) -> dict[str, Any]:
    return {"type": "send_sms", "name": "text_link", "description": "Text the booking link.",
            "sms_content": {"type": "predefined", "text": "Book here: https://sunny.example/{{user_number}}"},
            **extra}


def call_tool_then_answer(name: str, arguments: str = "{}") -> Any:
    def respond(body: dict[str, Any]) -> Completion:
        last_user = max(i for i, m in enumerate(body["messages"]) if m["role"] == "user")
        results = [m for m in body["messages"][last_user:] if m["role"] == "tool"]
        if results:
            return Completion(content=f"Tool said: {results[-1]['content']}")
        return Completion(tool_calls=[Call(name, arguments)])
    return respond


async def test_the_send_sms_tool_of_a_chat_agent(make_parley: MakeParley) -> None:
    parley = await make_parley(numbers=NUMBERS, agent=agent_file(retell_llm={"general_tools": [sms_tool()]}))
    parley.llm.respond = call_tool_then_answer("text_link")
    await parley.text("send me the link")
    await parley.twilio.wait_for(2)
    assert [m.body for m in parley.twilio.messages] == [f"Book here: https://sunny.example/{USER}",
                                                        "Tool said: Sent successfully"]
    await parley.idle()
    roles = [m["role"] for m in (await parley.chat_of())["message_with_tool_calls"]]
    assert roles == ["user", "tool_call_invocation", "tool_call_result", "agent", "agent"]


async def test_the_send_sms_tool_to_another_number_and_inferred(make_parley: MakeParley) -> None:
    tool = sms_tool(sms_content={"type": "inferred", "prompt": "Tell the manager who needs a call back."},
                    to_number="{{manager}}")
    agent = agent_file(retell_llm={"general_tools": [tool], "default_dynamic_variables": {"manager": "+15035550177"}})
    parley = await make_parley(numbers=NUMBERS, agent=agent)
    parley.llm.respond = call_tool_then_answer("text_link", json.dumps({"content": f"Call back {USER}"}))
    await parley.text("I need a manager")
    await parley.twilio.wait_for(2)
    assert (parley.twilio.messages[0].to, parley.twilio.messages[0].body) == ("+15035550177", f"Call back {USER}")
    definition = parley.llm.requests[0]["tools"][0]["function"]
    assert definition["parameters"]["required"] == ["content"]
    parley.twilio.errors["+15035550177"] = (400, 30007)
    await parley.text("again please")
    await parley.twilio.wait_for(3)
    assert parley.twilio.messages[-1].body.startswith("Tool said: Failed to send: Twilio refused the message")


async def test_human_takeover_round_trip(make_parley: MakeParley, receiver: Receiver) -> None:
    agent = agent_file(webhook_url=receiver.url, webhook_events=["chat_ended"])
    parley = await make_parley(numbers=NUMBERS, agent=agent)
    await parley.text("hi")
    await parley.twilio.wait_for(1)
    await parley.idle()
    chat_id = (await parley.chat_of())["chat_id"]
    paused = await api(parley, "PATCH", f"/update-chat/{chat_id}", 200, json={"agent_paused": True})
    assert paused["agent_paused"] is True
    assert await parley.redis.zscore(keys.timers(keys.shard_of(chat_id)), chat_id) is None

    await parley.text("is a person there?")
    update = (await receiver.wait_for(1))[0]
    assert update["event"] == "transcript_updated"
    assert update["chat"]["message_with_tool_calls"][-1]["content"] == "is a person there?"
    assert len(parley.llm.requests) == 1, "the LLM answered a paused chat"

    human = await api(parley, "POST", "/send-chat-message", 200, json={
        "chat_id": chat_id, "content": "Hi, this is Maya from the front desk.", "role": "human"})
    assert parley.twilio.messages[-1].body == "Hi, this is Maya from the front desk."
    assert human["chat_id"] == chat_id

    await api(parley, "PATCH", f"/update-chat/{chat_id}", 200, json={"agent_paused": False})
    assert await parley.redis.zscore(keys.timers(keys.shard_of(chat_id)), chat_id) is not None
    await parley.text("thanks Maya")
    await parley.twilio.wait_for(3)
    history = [m["content"] for m in parley.llm.requests[-1]["messages"][1:]]
    assert history == ["hi", "You said: hi", "is a person there?", "Hi, this is Maya from the front desk.",
                       "thanks Maya"]
    await parley.idle()
    chat = await parley.chat_of()
    assert chat["message_with_tool_calls"][3]["sender"] == "human"


async def test_send_chat_message_needs_an_ongoing_sms_chat(parley: Parley) -> None:
    api_chat = await api(parley, "POST", "/create-chat", 201, json={"agent_id": "frontdesk"})
    refused = await api(parley, "POST", "/send-chat-message", 409, json={"chat_id": api_chat["chat_id"],
                                                                         "content": "hi"})
    assert "not an SMS chat" in refused["message"]
    await api(parley, "POST", "/send-chat-message", 404, json={"chat_id": "chat_nope", "content": "hi"})


async def status_callback(parley: Parley, sid: str, status: str, error: str | None = None) -> int:
    form = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "SmsStatus": status,
            "AccountSid": ACCOUNT_SID, "From": AGENT_NUMBER, "To": USER, "ApiVersion": "2010-04-01"}
    if error:
        form["ErrorCode"] = error
    # Twilio calls the StatusCallback URL Parley gave it with the message.
    url = next(m.status_callback for m in parley.twilio.messages if m.sid == sid) or PUBLIC_URL + "/twilio/status"
    signature = sign(url, form, AUTH_TOKEN)
    response = await parley.client.post(url.removeprefix(PUBLIC_URL), data=form,
                                        headers={"X-Twilio-Signature": signature})
    return response.status


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_status_callbacks_in_any_order_end_at_the_latest_state(parley: Parley, seed: int) -> None:
    await parley.text("hi")
    [sent] = await parley.twilio.wait_for(1)
    await parley.idle()
    order = ["queued", "sending", "sent", "delivered"]
    random.Random(seed).shuffle(order)
    for status in order:
        assert await status_callback(parley, sent.sid, status) == 204
    message = (await parley.chat_of())["message_with_tool_calls"][-1]
    assert message["status"] == "delivered"


async def test_a_failed_delivery_keeps_its_error_and_21610_opts_out(parley: Parley) -> None:
    await parley.text("hi")
    [sent] = await parley.twilio.wait_for(1)
    await parley.idle()
    await status_callback(parley, sent.sid, "undelivered", "30003")
    await status_callback(parley, sent.sid, "sent")
    message = (await parley.chat_of())["message_with_tool_calls"][-1]
    assert (message["status"], message["error_code"]) == ("undelivered", 30003)

    chat_id = (await parley.chat_of())["chat_id"]
    await status_callback(parley, sent.sid, "failed", "21610")
    await parley.idle()
    assert await parley.redis.exists(keys.optout(keys.Conversation(AGENT_NUMBER, USER)))
    chat = await api(parley, "GET", f"/get-chat/{chat_id}", 200)
    assert chat["chat_status"] == "ended" and chat["disconnection_reason"] == "user_requested_dnc"


async def test_the_opt_out_list_and_clearing_with_consent(parley: Parley) -> None:
    await parley.text("STOP")
    await parley.idle()
    listed = await api(parley, "GET", f"/list-opt-outs?from_number=%2B{AGENT_NUMBER[1:]}", 200)
    assert [(o["from_number"], o["to_number"]) for o in listed] == [(AGENT_NUMBER, USER)]
    short = await api(parley, "POST", "/clear-opt-out", 422, json={"from_number": AGENT_NUMBER, "to_number": USER,
                                                                   "consent": "ok"})
    assert "consent" in short["message"]
    await api(parley, "POST", "/clear-opt-out", 204, json={
        "from_number": AGENT_NUMBER, "to_number": USER, "consent": "Signed paper form at the front desk, 11/27"})
    assert await api(parley, "GET", "/list-opt-outs", 200) == []
    await api(parley, "POST", "/clear-opt-out", 404, json={
        "from_number": AGENT_NUMBER, "to_number": USER, "consent": "Signed paper form at the front desk, 11/27"})


async def test_the_daily_cap_holds_across_two_processes(make_parley: MakeParley, receiver: Receiver) -> None:
    numbers = [{**NUMBERS[0], "daily_segment_limit": 3}]
    one = await make_parley(numbers=numbers, agent=agent_file(webhook_url=receiver.url, webhook_events=[]))
    two = await make_parley(numbers=numbers, agent=agent_file(webhook_url=receiver.url, webhook_events=[]))
    body = {"from_number": AGENT_NUMBER, "content": "One segment"}
    await api(one, "POST", "/send-sms", 200, json={**body, "to_number": "+14155550001"})
    await api(two, "POST", "/send-sms", 200, json={**body, "to_number": "+14155550002"})
    await api(one, "POST", "/send-sms", 200, json={**body, "to_number": "+14155550003"})
    refused = await api(two, "POST", "/send-sms", 429, json={**body, "to_number": "+14155550004"})
    assert "daily_segment_limit of 3 segments" in refused["message"]
    assert len(one.twilio.messages) == 3

    await one.text("hello", user="+14155550001")       # the agent's reply is refused too, and recorded
    report = (await receiver.wait_for(1))[0]
    assert report["event"] == "transcript_updated"
    failed = report["chat"]["message_with_tool_calls"][-1]
    assert failed["status"] == "failed" and "daily_segment_limit" in failed["error"]
    assert len(one.twilio.messages) == 3


async def test_an_auto_close_message_is_not_sent_to_an_opted_out_user(make_parley: MakeParley) -> None:
    parley = await make_parley(numbers=NUMBERS, agent=agent_file(end_chat_after_silence_ms=1_000,
                                                                 auto_close_message="Bye!"))
    await parley.text("hi")
    await parley.twilio.wait_for(1)
    await parley.idle()
    chat_id = (await parley.chat_of())["chat_id"]
    await parley.redis.set(keys.optout(keys.Conversation(AGENT_NUMBER, USER)), 1)
    # The silence ends the chat; the auto-close message would have been sent by the turn that ended it.
    async with asyncio.timeout(10):
        while True:
            chat = await api(parley, "GET", f"/get-chat/{chat_id}", 200)
            if chat["chat_status"] == "ended":
                break
            await asyncio.sleep(0.05)
    await parley.idle()
    assert [m.body for m in parley.twilio.messages] == ["You said: hi"]





async def test_create_sms_chat_over_the_cap_is_429(make_parley: MakeParley) -> None:
    parley = await make_parley(numbers=[{**NUMBERS[0], "daily_segment_limit": 1}],
                               agent=agent_file(retell_llm={"begin_message": "Hello!"}))
    await api(parley, "POST", "/send-sms", 200, json={"from_number": AGENT_NUMBER, "to_number": USER, "content": "a"})
    refused = await api(parley, "POST", "/create-sms-chat", 429, json={"from_number": AGENT_NUMBER,
                                                                       "to_number": "+14155550002"})
    assert "daily_segment_limit of 1" in refused["message"] and "the chat was ended" in refused["message"]


async def test_send_sms_answers_right_after_twilio_accepts(parley: Parley) -> None:
    parley.twilio.delay_s = 0.3
    started = asyncio.get_running_loop().time()
    await api(parley, "POST", "/send-sms", 200, json={"from_number": AGENT_NUMBER, "to_number": USER,
                                                      "content": "Your code is 1234"})
    assert asyncio.get_running_loop().time() - started < 0.3 + 2.0
