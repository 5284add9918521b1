"""Agents and phone numbers in Redis: written from the files at start, read by every turn and webhook.

An agent is a hash of versions (``agent:<id>``: version -> JSON). Publishing a file whose content
changed adds a version; a chat keeps the version it started with.
"""

from __future__ import annotations

import random

import redis.asyncio as aioredis

from . import keys
from .agentfiles import Catalog
from .errors import NotFound
from .retell import AgentWeight, ChatAgent, PhoneNumber


async def publish(redis: aioredis.Redis, catalog: Catalog) -> None:
    """Store every agent (as a new version when its content changed) and every number."""
    for agent in catalog.agents.values():
        await put_agent(redis, agent)
    async with redis.pipeline(transaction=True) as pipe:
        for number in catalog.numbers.values():
            pipe.set(keys.number(number.phone_number), number.model_dump_json())
            pipe.sadd(keys.NUMBERS, number.phone_number)
        await pipe.execute()


async def put_agent(redis: aioredis.Redis, agent: ChatAgent) -> ChatAgent:
    """Store ``agent`` as its latest version, unless the latest already has the same content."""
    latest = await _latest(redis, agent.agent_id)
    if latest is not None:
        if latest.model_copy(update={"version": 0}) == agent.model_copy(update={"version": 0}):
            return latest
        agent = agent.model_copy(update={"version": latest.version + 1})
    else:
        agent = agent.model_copy(update={"version": 0})
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.agent(agent.agent_id), str(agent.version), agent.model_dump_json())
        pipe.sadd(keys.AGENTS, agent.agent_id)
        await pipe.execute()
    return agent


async def _latest(redis: aioredis.Redis, agent_id: str) -> ChatAgent | None:
    versions = await redis.hkeys(keys.agent(agent_id))
    if not versions:
        return None
    raw = await redis.hget(keys.agent(agent_id), str(max(int(v) for v in versions)))
    return ChatAgent.model_validate_json(raw) if raw else None


async def get_agent(redis: aioredis.Redis, agent_id: str, version: int | None = None) -> ChatAgent:
    """The agent at ``version`` (the latest when None); ``NotFound`` if there is none."""
    if version is None:
        agent = await _latest(redis, agent_id)
    else:
        raw = await redis.hget(keys.agent(agent_id), str(version))
        agent = ChatAgent.model_validate_json(raw) if raw else None
    if agent is None:
        raise NotFound(f"agent {agent_id!r}" + (f" version {version}" if version is not None else "") + " not found")
    return agent


async def get_number(redis: aioredis.Redis, phone_number: str) -> PhoneNumber | None:
    raw = await redis.get(keys.number(phone_number))
    return PhoneNumber.model_validate_json(raw) if raw else None


def pick_agent(choices: list[AgentWeight], rng: random.Random | None = None) -> AgentWeight | None:
    """One of ``choices`` at random, proportional to weight (Retell's rule); None when empty."""
    if not choices:
        return None
    return (rng or random).choices(choices, weights=[c.weight for c in choices], k=1)[0]
