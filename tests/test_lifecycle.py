"""Inactivity auto-close, and a worker that dies mid-turn (docs/architecture.md)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.app import create_app

from .conftest import USER, MakeParley, agent_file, armed_timers, pending_wakeups


async def test_silence_closes_the_chat_with_the_auto_close_message(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(end_chat_after_silence_ms=1_000,
                                                auto_close_message="Thanks for texting. Bye for now!"))
    await parley.text("hi")
    await parley.twilio.wait_for(1)
    await parley.idle()
    chat_id = (await parley.chat_of())["chat_id"]
    sent = await parley.twilio.wait_for(2, within_s=5)
    assert sent[1].body == "Thanks for texting. Bye for now!" and sent[1].to == USER
    await parley.idle()
    chat = await (await parley.api("GET", f"/get-chat/{chat_id}")).json()
    assert chat["chat_status"] == "ended" and chat["disconnection_reason"] == "inactivity"
    assert chat["message_with_tool_calls"][-1]["content"] == "Thanks for texting. Bye for now!"
    assert await armed_timers(parley.redis) == 0
    await asyncio.sleep(1.2)
    assert len(parley.twilio.messages) == 2, "the chat was closed twice"


async def test_a_text_before_the_deadline_keeps_the_chat_open(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(end_chat_after_silence_ms=1_500))
    for body in ("one", "two", "three"):
        await parley.text(body)
        await asyncio.sleep(0.7)
    chat = await parley.chat_of()
    assert chat["chat_status"] == "ongoing"
    assert [m.body for m in parley.twilio.messages] == ["You said: one", "You said: two", "You said: three"]


async def test_a_turn_cancelled_before_commit_is_answered_after_reclaim(make_parley: MakeParley) -> None:
    first = await make_parley(drain_timeout_s=0)
    first.llm.delay_s = 1.0
    await first.text("are you open today?")
    await first.llm.called.wait()
    await first.client.close()       # the process stops mid-turn: the turn is cancelled before it commits
    assert first.twilio.messages == []
    assert await pending_wakeups(first.redis) == 1

    first.llm.delay_s = 0
    second = await make_parley()     # another process, same Redis: reclaims the stale wake-up
    sent = await second.twilio.wait_for(1, within_s=10)
    assert [m.body for m in sent] == ["You said: are you open today?"]
    await second.idle()
    chat = await second.chat_of()
    assert [m["role"] for m in chat["message_with_tool_calls"]] == ["user", "agent"]


async def test_web_and_worker_processes_split_the_work(
    make_parley: MakeParley, aiohttp_client: Any) -> None:
    web_only = await make_parley(run_workers=False)
    await web_only.text("hello from the web tier")
    await asyncio.sleep(0.3)
    assert web_only.twilio.messages == [], "a web-only process ran a turn"

    worker_app = create_app(web_only.settings, web_routes=False)
    worker = await aiohttp_client(worker_app)
    sent = await web_only.twilio.wait_for(1)
    assert sent[0].body == "You said: hello from the web tier"
    assert (await worker.post("/twilio/sms", data={})).status == 404   # `parley worker` serves health checks only
    assert (await worker.get("/readyz")).status == 200


async def test_shutdown_lets_a_running_turn_finish(make_parley: MakeParley) -> None:
    parley = await make_parley(drain_timeout_s=5)
    parley.llm.delay_s = 0.5
    await parley.text("quick question")
    await parley.llm.called.wait()
    await parley.client.close()
    assert [m.body for m in parley.twilio.messages] == ["You said: quick question"]
    assert await pending_wakeups(parley.redis) == 0


async def test_a_generated_api_key_is_printed_once_and_works(
    make_parley: MakeParley, capsys: pytest.CaptureFixture[str],
) -> None:
    parley = await make_parley(api_keys=[])
    printed = capsys.readouterr().err
    assert printed.count("PARLEY_API_KEY is not set") == 1
    key = printed.rsplit(": ", 1)[1].strip()
    response = await parley.client.get("/get-chat/none", headers={"Authorization": f"Bearer {key}"})
    assert response.status == 404
