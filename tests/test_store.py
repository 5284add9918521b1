"""Redis holds everything, bounded: every key has a TTL or a documented cap; the embedded Valkey persists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from service.app import create_app
from service.app_state import REDIS
from service.storage import keys

from .conftest import DEFAULT_NUMBERS, USER, MakeParley, agent_file, build_settings, write_agents
from .fakes.openai import FakeOpenAI
from .fakes.twilio import FakeTwilio

# Keys without a TTL, each bounded another way (see service/keys.py).
UNEXPIRING = {keys.AGENTS, keys.LLMS, keys.NUMBERS} | {
    key(shard) for shard in range(keys.SHARDS) for key in (
        keys.wakeups, keys.timers, keys.chats, keys.outbox_due, keys.outbox_failed, keys.analysis_due, keys.optouts)
}
UNEXPIRING_PREFIXES = (keys.agent(""), keys.llm(""), keys.number(""))


async def test_every_key_has_a_ttl_or_a_documented_bound(make_parley: MakeParley) -> None:
    parley = await make_parley(agent=agent_file(end_chat_after_silence_ms=60_000))
    await parley.text("hi")
    await parley.text("hi", user="+14155550999")
    await parley.twilio.wait_for(2)
    await parley.text("STOP", user="+14155550999")
    await parley.idle()
    unbounded = []
    async for key in parley.redis.scan_iter(match="parley:*"):
        if key in UNEXPIRING or key.startswith(UNEXPIRING_PREFIXES) or key.endswith(":optout"):
            continue
        if await parley.redis.ttl(key) < 0:
            unbounded.append(key)
    assert unbounded == []
    assert all([await parley.redis.xlen(keys.wakeups(s)) <= keys.WAKEUPS_MAXLEN for s in range(keys.SHARDS)])
    assert sum([await parley.redis.zcard(keys.timers(s)) for s in range(keys.SHARDS)]) == 1  # the one ongoing chat


async def test_a_full_mailbox_refuses_more(make_parley: MakeParley) -> None:
    parley = await make_parley(workers=1)
    conv = keys.Conversation("+15035550100", USER)
    await parley.redis.set(keys.lock(conv), "someone-else", px=60_000)   # no worker may drain it
    await parley.redis.rpush(keys.mailbox(conv), *['{"kind": "text", "received_ms": 1}'] * keys.MAILBOX_CAP)
    response = await parley.text("one too many")
    assert response.status == 503
    assert await parley.redis.llen(keys.mailbox(conv)) == keys.MAILBOX_CAP


async def test_embedded_valkey_persists_between_runs(
    tmp_path: Path, fake_twilio: FakeTwilio, fake_llm: FakeOpenAI, aiohttp_client: Any,
) -> None:
    agents_dir = tmp_path / "agents"
    write_agents(agents_dir, {"frontdesk": agent_file()}, DEFAULT_NUMBERS)
    settings = build_settings(None, agents_dir, fake_twilio, fake_llm, data_dir=tmp_path / "data")

    client = await aiohttp_client(create_app(settings))
    redis: aioredis.Redis = client.app[REDIS]
    assert (await redis.config_get("appendonly"))["appendonly"] == "yes"
    await redis.set("parley:probe", "kept")
    await client.close()
    assert (tmp_path / "data" / "valkey").is_dir()

    client = await aiohttp_client(create_app(settings))
    assert await client.app[REDIS].get("parley:probe") == "kept"
    assert (await client.get("/readyz")).status == 200
    await client.close()
