"""Inactivity auto-close, and a worker that dies mid-turn (docs/architecture.md)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.app import create_app
from service.storage import keys

from .conftest import USER, MakeParley, Receiver, agent_file, armed_timers, pending_wakeups


async def worker_groups(redis: aioredis.Redis) -> tuple[int, set[str]]:
    """How many partitions have the workers' consumer group (a worker pool creates it on every partition when
    it starts), and the consumers that have read from them."""
    groups, readers = 0, set()
    for shard in range(keys.SHARDS):
        stream = keys.wakeups(shard)
        if await redis.exists(stream) and any(g["name"] == keys.WORKER_GROUP for g in await redis.xinfo_groups(stream)):
            groups += 1
            readers |= {c["name"] for c in await redis.xinfo_consumers(stream, keys.WORKER_GROUP)}
    return groups, readers


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
    # The user writes again: a new chat, answered and closed in its turn. Its deadline firing proves the
    # inactivity loop ran past the first chat's deadline: a second close of the first chat would come first.
    await parley.text("hello again")
    sent = await parley.twilio.wait_for(4, within_s=5)
    assert [m.body for m in sent] == ["You said: hi", "Thanks for texting. Bye for now!",
                                      "You said: hello again", "Thanks for texting. Bye for now!"]
    await parley.idle()
    chat = await (await parley.api("GET", f"/get-chat/{chat_id}")).json()
    assert [m["content"] for m in chat["message_with_tool_calls"]] == ["hi", "You said: hi",
                                                                       "Thanks for texting. Bye for now!"]
    assert len(await parley.chat_ids()) == 2


async def test_a_text_before_the_deadline_keeps_the_chat_open(make_parley: MakeParley, receiver: Receiver) -> None:
    parley = await make_parley(agent=agent_file(end_chat_after_silence_ms=1_500, webhook_url=receiver.url,
                                                webhook_events=["chat_ended"]))
    last_text_ms = 0
    for n, body in enumerate(("one", "two", "three"), start=1):
        if n > 1:
            await asyncio.sleep(0.7)   # the texts come 0.7 s apart: the first deadline passes before the last
        last_text_ms = int(time.time() * 1000)
        await parley.text(body)
        await parley.twilio.wait_for(n)
    [ended] = await receiver.wait_for(1, within_s=5)   # the one close: 1.5 s after the last text
    chat = ended["chat"]
    assert chat["disconnection_reason"] == "inactivity"
    assert chat["end_timestamp"] >= last_text_ms + 1_500
    assert [m["content"] for m in chat["message_with_tool_calls"]] == [
        "one", "You said: one", "two", "You said: two", "three", "You said: three"]
    assert await parley.chat_ids() == [chat["chat_id"]]


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
    assert (await web_only.text("hello from the web tier")).status == 200
    assert await worker_groups(web_only.redis) == (0, set()), "a web-only process started workers"
    assert len([k async for k in web_only.redis.scan_iter(match="parley:{*}:conv:*:mailbox")]) == 1

    worker_app = create_app(web_only.settings, web_routes=False)
    worker = await aiohttp_client(worker_app)
    sent = await web_only.twilio.wait_for(1)
    assert [m.body for m in sent] == ["You said: hello from the web tier"]
    await web_only.idle()
    groups, readers = await worker_groups(web_only.redis)
    assert groups == keys.SHARDS and len(readers) == 1, "one reader: the worker process's"
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
