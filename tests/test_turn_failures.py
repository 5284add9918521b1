"""A turn that cannot run is tried again, then its texts are answered with the fallback message: no text is
dropped unanswered. And a lock held by an API request is renewed while a slow LLM writes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.storage import keys

from .conftest import AGENT_NUMBER, USER, MakeParley, Parley, agent_file
from .fakes.openai import Completion

FALLBACK = "We are having trouble; a person will text you back."
OUTBOUND = [{"phone_number": AGENT_NUMBER, "inbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}],
             "outbound_sms_agents": [{"agent_id": "frontdesk", "weight": 1}]}]


async def saved_llm(parley: Parley) -> Any:
    """The agent's Retell LLM as stored (the client decodes to str), to put back later."""
    return await parley.redis.hgetall(keys.llm("llm_frontdesk"))


async def break_the_llm(parley: Parley) -> None:
    """Delete the agent's Retell LLM behind Parley's back: every turn of the agent then raises NotFound."""
    await parley.redis.delete(keys.llm("llm_frontdesk"))


async def test_a_turn_that_keeps_failing_answers_with_the_fallback(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(fallback_message=FALLBACK), catalog_cache_ms=0)
    await break_the_llm(parley)
    await parley.text("is anyone there?")
    [sent] = await parley.twilio.wait_for(1)
    assert (sent.to, sent.body) == (USER, FALLBACK)
    await parley.idle()
    assert parley.llm.requests == []
    assert not await parley.redis.exists(keys.mailbox(keys.Conversation(AGENT_NUMBER, USER)))


async def test_the_fallback_is_recorded_in_the_ongoing_chat_and_the_next_text_is_answered(
    make_parley: MakeParley,
) -> None:
    parley = await make_parley(agent=agent_file(fallback_message=FALLBACK), catalog_cache_ms=0)
    await parley.text("hello")
    await parley.twilio.wait_for(1)
    await parley.idle()
    llm = await saved_llm(parley)
    await break_the_llm(parley)
    await parley.text("still there?")
    await parley.twilio.wait_for(2)
    await parley.idle()
    chat = await parley.chat_of()
    assert [(m["role"], m["content"]) for m in chat["message_with_tool_calls"][-2:]] == [
        ("user", "still there?"), ("agent", FALLBACK)]
    await parley.redis.hset(keys.llm("llm_frontdesk"), mapping=llm)   # fixed: the next text gets a real answer
    await parley.text("ok")
    sent = await parley.twilio.wait_for(3)
    assert sent[-1].body == "You said: ok"


async def test_a_turn_that_fails_once_is_run_again(make_parley: MakeParley, caplog: pytest.LogCaptureFixture) -> None:
    parley = await make_parley(catalog_cache_ms=0)
    llm = await saved_llm(parley)
    await break_the_llm(parley)
    await parley.text("hi")
    async with asyncio.timeout(5):   # the first attempt failed...
        while not any(r.getMessage() == "turn failed" for r in caplog.records):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await parley.redis.hset(keys.llm("llm_frontdesk"), mapping=llm)   # ...and an operator fixes it meanwhile
    [sent] = await parley.twilio.wait_for(1)
    assert sent.body == "You said: hi"


async def test_a_slow_opening_message_keeps_the_conversation_lock(make_parley: MakeParley) -> None:
    # The LLM writes the opening message for longer than the lock's TTL: without renewal, the user's text
    # would be answered first, by a worker that took the expired lock.
    # A TTL of 2 s (renewed every 0.67 s) and an LLM twice as slow: a loaded machine's stall of under a second
    # must not pass for a renewal that failed.
    parley = await make_parley(numbers=OUTBOUND, agent=agent_file(retell_llm={"begin_message": None}),
                               lock_ttl_ms=2_000)
    parley.llm.delay_s = 4.5
    opening = asyncio.create_task(parley.api("POST", "/create-sms-chat",
                                             json={"from_number": AGENT_NUMBER, "to_number": USER}))
    await parley.llm.called.wait()
    await parley.text("who is this?")
    assert (await opening).status == 200
    parley.llm.delay_s = 0
    sent = await parley.twilio.wait_for(2)
    assert [m.body for m in sent] == ["Hi, this is the front desk.", "You said: who is this?"]


async def test_two_completions_on_one_chat_never_run_together(make_parley: MakeParley) -> None:
    parley = await make_parley(lock_ttl_ms=2_000)   # the LLM outlasts the TTL twice, as above
    created = await parley.api("POST", "/create-chat", json={"agent_id": "frontdesk"})
    chat: dict[str, Any] = await created.json()
    parley.llm.max_in_flight = 0
    parley.llm.delay_s = 4.0
    parley.llm.respond = lambda body: Completion(content="ok")
    answers = await asyncio.gather(*(
        parley.api("POST", "/create-chat-completion", json={"chat_id": chat["chat_id"], "content": text})
        for text in ("one", "two")))
    assert [a.status for a in answers] == [201, 201]
    assert parley.llm.max_in_flight == 1
