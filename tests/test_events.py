"""Signed lifecycle events from the durable outbox, the chat_inbound webhook, and post-chat analysis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, cast

from retell.lib.webhook_auth import verify as _retell_verify  # what Retell(...).verify is

from service.storage import keys

from .conftest import AGENT_NUMBER, API_KEY, USER, MakeParley, Parley, Receiver, agent_file
from .fakes.openai import Call, Completion, HttpError

# retell-sdk leaves it unannotated: verify(body, api_key, signature) -> bool
retell_verify = cast(Callable[[str, str, str], bool], _retell_verify)


def goodbye_after_end_tool(body: dict[str, Any]) -> Completion:
    if any(m["role"] == "tool" for m in body["messages"]):
        return Completion(content="Bye!")
    if body["messages"][-1]["content"] == "bye":
        return Completion(tool_calls=[Call("end_chat", "{}")])
    return Completion(content="Hello!")


async def settled(parley: Parley, within_s: float = 10.0) -> None:
    """Wait until every chat's analysis has run and every outbox is delivered: no event is still to come (the
    analysis stores its result and queues chat_analyzed before it leaves analysis:due)."""
    async def busy() -> bool:
        for shard in range(keys.SHARDS):
            if await parley.redis.zcard(keys.analysis_due(shard)) or await parley.redis.zcard(keys.outbox_due(shard)):
                return True
        return False

    async with asyncio.timeout(within_s):
        while True:
            if not await busy():
                return
            await asyncio.sleep(0.02)


async def converse_and_end(parley: Parley) -> None:
    parley.llm.respond = goodbye_after_end_tool
    await parley.text("hi")
    await parley.twilio.wait_for(1)
    await parley.text("bye")
    await parley.twilio.wait_for(2)


async def test_events_are_signed_ordered_and_carry_the_chat(make_parley: MakeParley, receiver: Receiver) -> None:
    parley = await make_parley(agent=agent_file(webhook_url=receiver.url), event_retry_base_ms=50)
    await converse_and_end(parley)
    bodies = await receiver.wait_for(3)
    assert receiver.events() == ["chat_started", "chat_ended", "chat_analyzed"]
    for headers, raw in receiver.received:
        assert retell_verify(raw.decode(), API_KEY, headers["X-Retell-Signature"]), "retell-sdk rejects it"
        assert not retell_verify(raw.decode(), "another-key", headers["X-Retell-Signature"])
    assert len({h["X-Parley-Event-Id"] for h, _ in receiver.received}) == 3
    started, ended, analyzed = (b["chat"] for b in bodies)
    assert started["chat_status"] == "ongoing" and started["from_number"] == USER
    assert ended["chat_status"] == "ended" and ended["disconnection_reason"] == "agent_hangup"
    assert "chat_analysis" not in ended and "Agent: Bye!" in ended["transcript"]
    assert analyzed["chat_analysis"]["user_sentiment"] == "Neutral"
    assert started["chat_id"] == ended["chat_id"] == analyzed["chat_id"]


async def test_transcript_updates_and_event_filters(make_parley: MakeParley, receiver: Receiver) -> None:
    parley = await make_parley(agent=agent_file(webhook_url=receiver.url,
                                                webhook_events=["transcript_updated", "chat_ended"]))
    await converse_and_end(parley)
    await receiver.wait_for(3)
    await settled(parley)   # analysed, every outbox empty: nothing more is coming
    assert receiver.events() == ["transcript_updated", "transcript_updated", "chat_ended"]
    first = receiver.bodies()[0]["chat"]
    assert [m["content"] for m in first["message_with_tool_calls"]] == ["hi", "Hello!"]


async def test_the_account_webhook_is_used_when_the_agent_has_none(
    make_parley: MakeParley, receiver: Receiver,
) -> None:
    parley = await make_parley(webhook_url=receiver.url)
    await parley.text("hi")
    assert (await receiver.wait_for(1))[0]["event"] == "chat_started"


async def test_retries_keep_the_event_id_and_the_order(make_parley: MakeParley, receiver: Receiver) -> None:
    receiver.answers = [500, 503, 200]   # chat_started fails twice, then goes through
    parley = await make_parley(agent=agent_file(webhook_url=receiver.url), event_retry_base_ms=50)
    await converse_and_end(parley)
    await receiver.wait_for(5)
    assert receiver.events() == ["chat_started"] * 3 + ["chat_ended", "chat_analyzed"]
    ids = [h["X-Parley-Event-Id"] for h, _ in receiver.received]
    assert ids[0] == ids[1] == ids[2] and len(set(ids)) == 3


async def test_a_4xx_is_not_retried_and_a_dead_endpoint_gives_up(
    make_parley: MakeParley, receiver: Receiver,
) -> None:
    receiver.answers = [400, 500, 500, 500]
    parley = await make_parley(agent=agent_file(webhook_url=receiver.url), event_retry_base_ms=20,
                               event_max_attempts=3)
    await converse_and_end(parley)
    await receiver.wait_for(5)
    await settled(parley)
    assert receiver.events() == ["chat_started", "chat_ended", "chat_ended", "chat_ended", "chat_analyzed"]
    failed = [json.loads(raw) for s in range(keys.SHARDS)
              for raw in await parley.redis.lrange(keys.outbox_failed(s), 0, -1)]
    assert [(f["kind"], f["attempts"], f["last_error"][:8]) for f in failed] == [
        ("chat_ended", 3, "HTTP 500"), ("chat_started", 1, "HTTP 400")]


async def test_queued_events_survive_a_restart(make_parley: MakeParley, receiver: Receiver) -> None:
    receiver.answers = [503]
    first = await make_parley(agent=agent_file(webhook_url=receiver.url), event_retry_base_ms=1_500)
    await first.text("hi")
    await receiver.wait_for(1)
    await first.client.close()
    assert await first.redis.llen(keys.outbox((await first.chat_ids())[0])) == 1
    second = await make_parley(agent=agent_file(webhook_url=receiver.url), event_retry_base_ms=1_500)
    await receiver.wait_for(2, within_s=10)
    assert receiver.events() == ["chat_started", "chat_started"]
    assert await second.redis.llen(keys.outbox((await second.chat_ids())[0])) == 0


async def test_chat_inbound_can_reject(make_parley: MakeParley, receiver: Receiver) -> None:
    receiver.answers = [(200, {"chat_inbound": {"reject": True}})]
    parley = await make_parley(numbers=[{"phone_number": AGENT_NUMBER, "inbound_sms_webhook_url": receiver.url,
                                         "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}])
    await parley.text("let me in")
    await receiver.wait_for(1)
    await parley.idle()
    assert parley.twilio.messages == [] and parley.llm.requests == [] and await parley.chat_ids() == []
    rejected = await parley.redis.lrange(keys.rejected(keys.Conversation(AGENT_NUMBER, USER)), 0, -1)
    assert [json.loads(r)["content"] for r in rejected] == ["let me in"]
    headers, raw = receiver.received[0]
    assert retell_verify(raw.decode(), API_KEY, headers["X-Retell-Signature"])
    body = json.loads(raw)
    assert body["event"] == "chat_inbound"
    assert body["chat_inbound"] == {"chat_id": body["chat_inbound"]["chat_id"], "agent_id": "frontdesk",
                                    "agent_version": None, "from_number": USER, "to_number": AGENT_NUMBER,
                                    "message": "let me in", "message_sid": body["chat_inbound"]["message_sid"]}
    assert keys.is_chat_id(body["chat_inbound"]["chat_id"])   # rejected: no chat has it


async def test_chat_inbound_overrides_agent_variables_and_metadata(
    make_parley: MakeParley, receiver: Receiver,
) -> None:
    receiver.answers = [(200, {"chat_inbound": {"override_agent_id": "vip", "dynamic_variables": {"tier": "gold"},
                                                "metadata": {"crm_id": "c-9"}}})]
    vip = agent_file(retell_llm={"general_prompt": "VIP desk for a {{tier}} member."})
    numbers = [{"phone_number": AGENT_NUMBER, "inbound_sms_webhook_url": receiver.url,
                "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]
    parley = await make_parley(agents={"frontdesk": agent_file(), "vip": vip}, numbers=numbers)
    await parley.text("hello")
    await parley.twilio.wait_for(1)
    await parley.text("again")
    await parley.twilio.wait_for(2)
    await parley.idle()
    assert len(receiver.received) == 1, "chat_inbound fires once per new chat, not per message"
    assert parley.llm.requests[0]["messages"][0]["content"].startswith("VIP desk for a gold member.")
    chat = await parley.chat_of()
    assert chat["agent_id"] == "vip" and chat["metadata"] == {"crm_id": "c-9"}
    assert chat["retell_llm_dynamic_variables"] == {"tier": "gold"}


async def test_chat_inbound_down_falls_back_to_the_bound_agent(make_parley: MakeParley, receiver: Receiver) -> None:
    receiver.answers = [500, 500]
    numbers = [{"phone_number": AGENT_NUMBER, "inbound_sms_webhook_url": receiver.url,
                "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]
    parley = await make_parley(numbers=numbers, inbound_webhook_attempts=2)
    await parley.text("hello")
    sent = await parley.twilio.wait_for(1)
    assert sent[0].body == "You said: hello" and len(receiver.received) == 2
    await parley.idle()
    chat = await parley.chat_of()
    assert chat["agent_id"] == "frontdesk"
    assert chat["inbound_webhook_error"] == "chat_inbound webhook failed after 2 attempts: HTTP 500"


ANALYSIS_DATA = [
    {"type": "string", "name": "visit_day", "description": "The day the visit was booked for"},
    {"type": "enum", "name": "outcome", "description": "How it went", "choices": ["booked", "declined"]},
    {"type": "boolean", "name": "new_patient", "description": "Is the user a new patient", "required": True},
    {"type": "number", "name": "party_size", "description": "How many people"},
]


async def test_analysis_fields_are_typed_as_declared(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(post_chat_analysis_data=ANALYSIS_DATA,
                                                post_chat_analysis_model="gpt-analysis"))
    await converse_and_end(parley)
    async with asyncio.timeout(5):
        await parley.llm.analysed.wait()
    request = parley.llm.analyses[0]
    assert request["model"] == "gpt-analysis"
    custom = request["response_format"]["json_schema"]["schema"]["properties"]["custom_analysis_data"]
    assert custom["properties"]["outcome"]["enum"] == ["booked", "declined", None]
    assert custom["properties"]["party_size"]["type"] == ["number", "null"]
    assert "User: bye" in request["messages"][1]["content"]
    await settled(parley)   # the analysis is stored before the chat leaves analysis:due
    [chat_id] = await parley.chat_ids()
    chat = await (await parley.api("GET", f"/get-chat/{chat_id}")).json()
    assert chat["chat_analysis"]["custom_analysis_data"] == {
        "visit_day": "something", "outcome": "booked", "new_patient": True, "party_size": 1}


async def test_a_required_field_missing_marks_the_chat_unsuccessful(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(post_chat_analysis_data=ANALYSIS_DATA))
    await converse_and_end(parley)
    [chat_id] = await parley.chat_ids()
    parley.llm.analyze = lambda body: Completion(content=json.dumps({
        "chat_summary": "s", "user_sentiment": "Positive", "chat_successful": True,
        "custom_analysis_data": {"visit_day": None, "outcome": None, "new_patient": None, "party_size": None}}))
    chat = await (await parley.api("PUT", f"/rerun-chat-analysis/{chat_id}")).json()
    assert chat["chat_analysis"]["chat_successful"] is False
    parley.llm.analyze = lambda body: Completion(content=json.dumps({
        "chat_summary": "s", "user_sentiment": "Positive", "chat_successful": True,
        "custom_analysis_data": {"new_patient": "yes"}}))
    chat = await (await parley.api("PUT", f"/rerun-chat-analysis/{chat_id}")).json()
    assert chat["analysis_error"] == "custom_analysis_data.new_patient: expected a boolean, got 'yes'"


async def test_analysis_failure_still_sends_chat_analyzed(make_parley: MakeParley, receiver: Receiver) -> None:
    parley = await make_parley(agent=agent_file(webhook_url=receiver.url, webhook_events=["chat_analyzed"]))
    parley.llm.analyze = lambda body: HttpError(500, should_retry=False)
    await converse_and_end(parley)
    bodies = await receiver.wait_for(1)
    chat = bodies[0]["chat"]
    assert bodies[0]["event"] == "chat_analyzed" and "chat_analysis" not in chat
    assert chat["analysis_error"].startswith("LLM call failed: InternalServerError")


async def test_auto_closed_chats_are_analysed_too(make_parley: MakeParley, receiver: Receiver) -> None:
    parley = await make_parley(agent=agent_file(webhook_url=receiver.url, end_chat_after_silence_ms=1_000,
                                                webhook_events=["chat_ended", "chat_analyzed"]))
    await parley.text("hi")
    bodies = await receiver.wait_for(2, within_s=6)
    assert [b["event"] for b in bodies] == ["chat_ended", "chat_analyzed"]
    assert bodies[0]["chat"]["disconnection_reason"] == "inactivity"
    assert bodies[1]["chat"]["chat_analysis"]["chat_summary"]
