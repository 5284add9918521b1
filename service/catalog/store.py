"""Agents, Retell LLMs and phone numbers in Redis: written from the files at start and by the API.

Agents and LLMs are versioned: ``agent:<id>`` and ``llm:<id>`` are hashes of version -> JSON, and every
change adds a version (publishing a file whose content changed does too). A chat records the agent
version and the LLM version it started with, so an edit never changes a conversation in flight.

Every webhook and turn reads numbers, agents and LLMs, which change rarely: reads are kept for
``PARLEY_CATALOG_CACHE_MS`` (``Recent``). A change made through a process clears that process's copies at
once; other processes see it within that time.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import redis.asyncio as aioredis
from pydantic import BaseModel
from redis.exceptions import WatchError

from service.catalog.agent_files import Declared
from service.catalog.cache import Parsed, Recent
from service.clock import now_ms
from service.errors import NotFound
from service.retell.models import AgentWeight, ChatAgent, PhoneNumber, ResponseEngine, RetellLLM
from service.storage import keys

M = TypeVar("M", ChatAgent, RetellLLM)
_VOLATILE = {"version", "last_modification_timestamp", "is_published"}


def _same(a: BaseModel, b: BaseModel) -> bool:
    return a.model_dump(exclude=_VOLATILE) == b.model_dump(exclude=_VOLATILE)


# The latest version of a versioned object: versions are numbered 0..n-1, so it is field n-1.
_LATEST = """
local n = redis.call('HLEN', KEYS[1])
if n == 0 then return false end
return redis.call('HGET', KEYS[1], tostring(n - 1))
"""


async def _delete_indexed(redis: aioredis.Redis, key: str, index: str, member: str) -> bool:
    """Delete ``key`` and its ``member`` of the ``index`` set together; True if the key existed."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.srem(index, member)
        deleted, _ = await pipe.execute()
    return bool(deleted)


class Versioned(Generic[M]):
    """A set of versioned objects of one kind: every ``put`` adds a version."""

    def __init__(self, redis: aioredis.Redis, model: type[M], key: Callable[[str], str], index: str, kind: str,
                 *, cache_ms: int = 0):
        self._redis = redis
        self._recent: Recent[M | None] = Recent(cache_ms)
        self._model: type[M] = model
        self._key = key
        self._index = index
        self.kind = kind
        self._parse: Parsed[M] = Parsed(model)
        self._latest = redis.register_script(_LATEST)

    async def versions(self, object_id: str) -> list[M]:
        raw = await self._redis.hgetall(self._key(object_id))
        return sorted((self._model.model_validate_json(v) for v in raw.values()), key=lambda m: m.version)

    async def get(self, object_id: str, version: int | None = None) -> M:
        """The object at ``version`` (the latest when None); ``NotFound`` otherwise."""
        found = await self._recent.get(f"{object_id} {version}", lambda: self._read(object_id, version))
        if found is not None:
            return found
        suffix = f" version {version}" if version is not None else ""
        raise NotFound(f"{self.kind} {object_id!r}{suffix} not found")

    async def _read(self, object_id: str, version: int | None) -> M | None:
        if version is None:
            raw = await self._latest(keys=[self._key(object_id)])
        else:
            raw = await self._redis.hget(self._key(object_id), str(version))
        return self._parse(str(raw)) if raw else None

    async def exists(self, object_id: str) -> bool:
        return bool(await self._redis.exists(self._key(object_id)))

    async def put(self, obj: M, *, unless_unchanged: bool = False) -> M:
        """Store ``obj`` as a new version (the first is 0); with ``unless_unchanged``, keep an equal latest."""
        object_id = self._id(obj)
        key = self._key(object_id)
        self._recent.clear()
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    latest = [self._model.model_validate_json(v) for v in (await pipe.hgetall(key)).values()]
                    top = max(latest, key=lambda m: m.version, default=None)
                    if unless_unchanged and top is not None and _same(top, obj):
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        return top
                    stored = obj.model_copy(update={"version": top.version + 1 if top else 0,
                                                    "last_modification_timestamp": now_ms()})
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(key, str(stored.version), stored.model_dump_json())
                    pipe.sadd(self._index, object_id)
                    await pipe.execute()
                    return stored
                except WatchError:
                    continue

    async def delete(self, object_id: str) -> bool:
        self._recent.clear()
        return await _delete_indexed(self._redis, self._key(object_id), self._index, object_id)

    async def ids(self) -> list[str]:
        return sorted(str(i) for i in await self._redis.smembers(self._index))

    def _id(self, obj: M) -> str:
        return obj.agent_id if isinstance(obj, ChatAgent) else obj.llm_id


@dataclass(frozen=True, slots=True)
class Agent:
    """An agent version together with the Retell LLM version it answers with."""

    config: ChatAgent
    llm: RetellLLM


class Catalog:
    """Agents, LLMs and numbers."""

    def __init__(self, redis: aioredis.Redis, *, cache_ms: int = 0) -> None:
        self._redis = redis
        self._parse_number = Parsed(PhoneNumber)
        self._numbers: Recent[PhoneNumber | None] = Recent(cache_ms)
        self.agents: Versioned[ChatAgent] = Versioned(redis, ChatAgent, keys.agent, keys.AGENTS, "agent",
                                                      cache_ms=cache_ms)
        self.llms: Versioned[RetellLLM] = Versioned(redis, RetellLLM, keys.llm, keys.LLMS, "retell llm",
                                                    cache_ms=cache_ms)

    async def publish(self, files: Declared) -> None:
        """Store what the files declare (a changed file becomes a new version)."""
        for agent in files.agents.values():
            llm = agent.retell_llm
            if llm is not None:
                await self.llms.put(llm, unless_unchanged=True)
                agent = agent.model_copy(update={"retell_llm": None,
                                                 "response_engine": ResponseEngine(llm_id=llm.llm_id)})
            await self.agents.put(agent, unless_unchanged=True)
        for number in files.numbers.values():
            await self.put_number(number)

    async def resolve(self, agent_id: str, version: int | None = None, llm_version: int | None = None) -> Agent:
        """The agent at ``version`` with its LLM at ``llm_version`` (else the version it names, else the latest)."""
        config = await self.agents.get(agent_id, version)
        if config.response_engine is None:
            raise NotFound(f"agent {agent_id!r} has no response_engine")
        engine = config.response_engine
        llm = await self.llms.get(engine.llm_id, llm_version if llm_version is not None else engine.version)
        return Agent(config=config, llm=llm)

    async def get_number(self, phone_number: str) -> PhoneNumber | None:
        return await self._numbers.get(phone_number, lambda: self._read_number(phone_number))

    async def _read_number(self, phone_number: str) -> PhoneNumber | None:
        raw = await self._redis.get(keys.number(phone_number))
        return self._parse_number(str(raw)) if raw else None

    async def put_number(self, number: PhoneNumber) -> PhoneNumber:
        self._numbers.clear()
        number = number.model_copy(update={"last_modification_timestamp": now_ms()})
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.number(number.phone_number), number.model_dump_json())
            pipe.sadd(keys.NUMBERS, number.phone_number)
            await pipe.execute()
        return number

    async def delete_number(self, phone_number: str) -> bool:
        self._numbers.clear()
        return await _delete_indexed(self._redis, keys.number(phone_number), keys.NUMBERS, phone_number)

    async def numbers(self) -> list[PhoneNumber]:
        ids = sorted(str(n) for n in await self._redis.smembers(keys.NUMBERS))
        raws = await self._redis.mget([keys.number(n) for n in ids]) if ids else []
        return [PhoneNumber.model_validate_json(raw) for raw in raws if raw]


def pick_agent(choices: list[AgentWeight], rng: random.Random | None = None) -> AgentWeight | None:
    """One of ``choices`` at random, proportional to weight (Retell's rule); None when empty."""
    if not choices:
        return None
    return (rng or random).choices(choices, weights=[c.weight for c in choices], k=1)[0]
