"""A whole SMS conversation through the inbound webhook, the workers, the LLM and Twilio."""

from __future__ import annotations

import asyncio

from .conftest import AGENT_NUMBER, USER, MakeParley, agent_file
from .fakes.openai import Completion, FakeOpenAI, HttpError


async def test_two_turns_share_history(make_parley: MakeParley) -> None:
    parley = await make_parley()
    response = await parley.text("Hi, are you open Saturday?")
    assert response.status == 200
    assert await response.text() == '<?xml version="1.0" encoding="UTF-8"?><Response />'
    await parley.twilio.wait_for(1)
    await parley.text("And Sunday?")
    sent = await parley.twilio.wait_for(2)
    assert [m.body for m in sent] == ["You said: Hi, are you open Saturday?", "You said: And Sunday?"]
    assert all(m.to == USER and m.from_ == AGENT_NUMBER for m in sent)
    second = parley.llm.requests[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert USER in second[0]["content"]
    assert "by SMS" in second[0]["content"] and "at most about 459 characters" in second[0]["content"]
    await parley.idle()
    chat = await parley.chat_of()
    assert chat["chat_type"] == "sms_chat" and chat["chat_status"] == "ongoing"
    assert chat["from_number"] == USER and chat["to_number"] == AGENT_NUMBER
    assert [m["role"] for m in chat["message_with_tool_calls"]] == ["user", "agent", "user", "agent"]
    assert chat["message_with_tool_calls"][1]["message_sid"] == sent[0].sid
    # Delivery statuses come back to a URL that names the chat (the signature covers it).
    assert {m.status_callback for m in sent} == {f"https://parley.example.com/twilio/status?chat_id={chat['chat_id']}"}


async def test_three_quick_texts_are_one_turn(make_parley: MakeParley) -> None:
    # A 1 s window: three webhooks in a row took more than 400 ms on a loaded CI machine.
    parley = await make_parley(agent=agent_file(burst_window_ms=1_000))
    for body in ("hi", "I need to move my visit", "to friday"):
        assert (await parley.text(body)).status == 200
    await parley.twilio.wait_for(1)
    await parley.idle()
    assert len(parley.llm.requests) == 1
    users = [m["content"] for m in parley.llm.requests[0]["messages"] if m["role"] == "user"]
    assert users == ["hi", "I need to move my visit", "to friday"]
    assert len(parley.twilio.messages) == 1


async def test_conversations_run_in_parallel_and_each_stays_in_order(make_parley: MakeParley) -> None:
    parley = await make_parley()
    parley.llm.delay_s = 0.3
    other = "+14155550999"
    await parley.text("a1", user=USER)
    await parley.text("b1", user=other)
    await asyncio.sleep(0.1)          # both turns are in the LLM now
    await parley.text("a2", user=USER)
    await parley.text("a3", user=USER)
    await parley.idle()
    assert parley.llm.max_in_flight == 2, "two conversations did not run at the same time"
    assert parley.twilio.to(USER) == ["You said: a1", "You said: a3"]
    second = [m["content"] for m in parley.llm.requests[-1]["messages"] if m["role"] == "user"]
    assert second == ["a1", "a2", "a3"]
    assert parley.twilio.to(other) == ["You said: b1"]
    chat = await parley.chat_of()
    assert [m["content"] for m in chat["message_with_tool_calls"]] == [
        "a1", "You said: a1", "a2", "a3", "You said: a3"]


async def test_llm_outage_sends_the_fallback_text(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(fallback_message="We're having trouble; please call us."))
    parley.llm.respond = lambda body: HttpError(503, should_retry=False)
    await parley.text("hello")
    sent = await parley.twilio.wait_for(1)
    assert sent[0].body == "We're having trouble; please call us."


async def test_llm_errors_are_retried_by_the_sdk_then_fall_back(make_parley: MakeParley, fake_llm: FakeOpenAI) -> None:
    parley = await make_parley(llm_max_retries=1)
    parley.llm.respond = lambda body: HttpError(500)
    await parley.text("hello")
    sent = await parley.twilio.wait_for(1)
    assert sent[0].body == agent_file_default_fallback()
    assert len(parley.llm.requests) == 2, "the SDK's retry did not happen"


def agent_file_default_fallback() -> str:
    from service.retell.models import ChatAgent

    return str(ChatAgent.model_fields["fallback_message"].default)


async def test_a_long_reply_is_split_at_sentences_and_sent_in_order(make_parley: MakeParley) -> None:
    sentences = [f"Sentence number {i} says something useful about your visit." for i in range(12)]
    parley = await make_parley(agent=agent_file(max_reply_segments=1))
    parley.llm.respond = lambda body: Completion(content=" ".join(sentences))
    await parley.text("tell me everything")
    await parley.idle()
    bodies = [m.body for m in parley.twilio.messages]
    assert len(bodies) > 1
    assert " ".join(bodies) == " ".join(sentences)
    assert all(len(b) <= 160 and b.endswith(".") for b in bodies)
    chat = await parley.chat_of()
    agent_parts = [m for m in chat["message_with_tool_calls"] if m["role"] == "agent"]
    assert [m["content"] for m in agent_parts] == bodies
    assert all(m["segments"] == 1 and m["encoding"] == "GSM-7" for m in agent_parts)


async def test_curly_quotes_are_sent_as_gsm7(make_parley: MakeParley) -> None:
    parley = await make_parley()
    reply = "We’re open “9–5” on weekdays… see you soon!" + " Thanks." * 10
    parley.llm.respond = lambda body: Completion(content=reply)
    await parley.text("hours?")
    sent = await parley.twilio.wait_for(1)
    assert sent[0].body.startswith("We're open \"9-5\" on weekdays... see you soon!")
    await parley.idle()
    message = (await parley.chat_of())["message_with_tool_calls"][-1]
    assert message["encoding"] == "GSM-7" and message["segments"] == 1


async def test_the_history_given_to_the_llm_is_a_window(make_parley: MakeParley) -> None:
    parley = await make_parley(history_window=4)
    for i in range(4):
        await parley.text(f"message {i}")
        await parley.twilio.wait_for(i + 1)
    last = parley.llm.requests[-1]["messages"]
    # The window is the last 4 stored messages, then the new text.
    assert [m["content"] for m in last[1:]] == [
        "message 1", "You said: message 1", "message 2", "You said: message 2", "message 3"]


async def test_workers_bound_how_many_conversations_run_at_once(make_parley: MakeParley) -> None:
    parley = await make_parley(workers=1)
    parley.llm.delay_s = 0.2
    for user in ("+14155550001", "+14155550002", "+14155550003"):
        await parley.text("hi", user=user)
    await parley.twilio.wait_for(3)
    assert parley.llm.max_in_flight == 1
