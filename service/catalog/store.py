"""Agents, Retell LLMs and phone numbers in Redis: written from the files at start and by the API.

Agents and LLMs are versioned as Retell versions them: ``agent:<id>`` and ``llm:<id>`` are hashes of version
-> JSON, numbered from 0. A version is a draft (an update edits it in place) or published (frozen).
``/create-agent-version`` copies a version into a new draft, ``/publish-agent-version`` publishes a draft.
An agent version names the version of its Retell LLM (``response_engine.version``), and the two go together:
a new agent draft gets a new draft of its LLM version, and publishing the agent publishes its LLM version. A
chat records the agent version and the LLM version it started with.

Agent files are read-only: each file content becomes a published version (a changed file a new one), so their
agents have no drafts.

Every webhook and turn reads numbers, agents and LLMs, which change rarely: reads are kept for
``PARLEY_CATALOG_CACHE_MS`` (``Recent``). A change made through a process clears that process's copies at
once; other processes see it within that time.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import redis.asyncio as aioredis
from pydantic import BaseModel
from redis.asyncio.client import Pipeline

from service.catalog.agent_files import Declared
from service.catalog.cache import Parsed, Recent
from service.clock import now_ms
from service.errors import Conflict, NotFound
from service.retell.models import AgentVersion, AgentWeight, ChatAgent, PhoneNumber, ResponseEngine, RetellLLM
from service.storage import keys
from service.storage.locks import Locks

M = TypeVar("M", ChatAgent, RetellLLM)
T = TypeVar("T")
_VOLATILE = {"version", "last_modification_timestamp", "is_published", "base_version"}
CATALOG_LOCK_MS = 10_000   # a catalog change holds its lock at most this long (renewed while it runs)


def _same(a: BaseModel, b: BaseModel) -> bool:
    return a.model_dump(exclude=_VOLATILE) == b.model_dump(exclude=_VOLATILE)


# The latest version of a versioned object: its highest-numbered field (versions can be deleted: not HLEN - 1).
_LATEST = """
local top = -1
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  local n = tonumber(field)
  if n > top then top = n end
end
if top < 0 then return false end
return redis.call('HGET', KEYS[1], tostring(top))
"""


async def _delete_indexed(redis: aioredis.Redis, key: str, index: str, member: str) -> bool:
    """Delete ``key`` and its ``member`` of the ``index`` set together; True if the key existed."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.srem(index, member)
        deleted, _ = await pipe.execute()
    return bool(deleted)


async def _transaction(redis: aioredis.Redis, watched: list[str], build: Callable[[Pipeline], Awaitable[T]]) -> T:
    """Run ``build`` as if under WATCH: it reads through the pipeline it is given, then calls ``multi()`` and queues
    its writes, which go in one MULTI/EXEC; what it raises writes nothing. The reads are kept consistent by the
    catalog's write lock rather than WATCH: redis-py's cluster pipelines cannot read while watching. Catalog
    writes are few (the API's), so waiting for the lock costs nothing that matters. ``watched`` names the keys."""
    lock = Locks(redis, ttl_ms=CATALOG_LOCK_MS)
    busy = "the catalog is busy with another change; try again"
    async with lock.held(keys.CATALOG_LOCK, busy=busy), redis.pipeline(transaction=True) as pipe:
        result = await build(cast(Pipeline, _Staged(redis, pipe)))
        await pipe.execute()
        return result


class _Staged:
    """What ``_transaction`` gives ``build``: reads (and ``watch``, a no-op under the lock) go to Redis at once;
    after ``multi()`` the writes queue in the transaction pipeline."""

    def __init__(self, redis: aioredis.Redis, pipe: Pipeline) -> None:
        self._redis, self._pipe, self._writing = redis, pipe, False

    async def watch(self, *names: str) -> None:
        pass

    def multi(self) -> None:
        self._pipe.multi()  # type: ignore[no-untyped-call]
        self._writing = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe if self._writing else self._redis, name)


class Versioned(Generic[M]):
    """A set of versioned objects of one kind (see the module's docstring)."""

    def __init__(self, redis: aioredis.Redis, model: type[M], key: Callable[[str], str], index: str, kind: str,
                 *, cache_ms: int = 0):
        self._redis = redis
        self._recent: Recent[M | None] = Recent(cache_ms)
        self._model: type[M] = model
        self.key = key
        self._index = index
        self.kind = kind
        self._parse: Parsed[M] = Parsed(model)
        self._latest = redis.register_script(_LATEST)

    async def versions(self, object_id: str) -> list[M]:
        """Every version, by number."""
        return [v for _, v in sorted((await self.read_all(self._redis, object_id)).items())]

    async def get(self, object_id: str, version: int | None = None) -> M:
        """The object at ``version`` (the latest when None); ``NotFound`` otherwise."""
        found = await self._recent.get(f"{object_id} {version}", lambda: self._read(object_id, version))
        if found is not None:
            return found
        suffix = f" version {version}" if version is not None else ""
        raise NotFound(f"{self.kind} {object_id!r}{suffix} not found")

    async def find(self, object_id: str, ref: AgentVersion | None) -> M:
        """The version Retell's version reference ``ref`` names: a number, ``latest`` (also None: the highest
        number, draft or not) or ``latest_published``; ``NotFound`` otherwise."""
        if ref != "latest_published":
            return await self.get(object_id, None if ref == "latest" else ref)
        found = await self._recent.get(f"{object_id} published", lambda: self._published(object_id))
        if found is not None:
            return found
        await self.get(object_id)   # NotFound for an unknown object
        raise NotFound(f"{self.kind} {object_id!r} has no published version")

    async def _published(self, object_id: str) -> M | None:
        return next((v for v in reversed(await self.versions(object_id)) if v.is_published), None)

    async def _read(self, object_id: str, version: int | None) -> M | None:
        if version is None:
            raw = await self._latest(keys=[self.key(object_id)])
        else:
            raw = await self._redis.hget(self.key(object_id), str(version))
        return self._parse(str(raw)) if raw else None

    async def read_all(self, conn: aioredis.Redis | Pipeline, object_id: str) -> dict[int, M]:
        """Every version by number, read through ``conn`` (a watching pipeline reads in a transaction)."""
        raw = await conn.hgetall(self.key(object_id))
        return {int(v): self._parse(str(text)) for v, text in raw.items()}

    def stage(self, pipe: Pipeline, obj: M) -> None:
        """Queue writing ``obj`` as its version on ``pipe`` (in ``multi()``)."""
        pipe.hset(self.key(self._id(obj)), str(obj.version), obj.model_dump_json())
        pipe.sadd(self._index, self._id(obj))

    async def exists(self, object_id: str) -> bool:
        return bool(await self._redis.exists(self.key(object_id)))

    async def create(self, obj: M) -> M:
        """Store ``obj`` as version 0, a draft; ``Conflict`` when the id is taken."""
        object_id = self._id(obj)
        stored = obj.model_copy(update={"version": 0, "is_published": False, "last_modification_timestamp": now_ms()})

        async def build(pipe: Pipeline) -> M:
            if await pipe.exists(self.key(object_id)):
                raise Conflict(f"{self.kind} {object_id!r} already exists")
            pipe.multi()  # type: ignore[no-untyped-call]
            self.stage(pipe, stored)
            return stored
        return await self._write([self.key(object_id)], build)

    async def append(self, obj: M, *, published: bool, unless_unchanged: bool = False) -> M:
        """Store ``obj`` as the next version; with ``unless_unchanged``, keep a latest that equals it."""
        object_id = self._id(obj)

        async def build(pipe: Pipeline) -> M:
            versions = await self.read_all(pipe, object_id)
            top = versions[max(versions)] if versions else None
            if unless_unchanged and top is not None and top.is_published == published and _same(top, obj):
                return top
            stored = obj.model_copy(update={"version": top.version + 1 if top else 0, "is_published": published,
                                            "last_modification_timestamp": now_ms()})
            pipe.multi()  # type: ignore[no-untyped-call]
            self.stage(pipe, stored)
            return stored
        return await self._write([self.key(object_id)], build)

    async def edit(self, obj: M) -> M:
        """Replace the draft ``obj.version`` with ``obj``: ``NotFound`` without it, ``Conflict`` once published."""
        object_id = self._id(obj)

        async def build(pipe: Pipeline) -> M:
            current = (await self.read_all(pipe, object_id)).get(obj.version)
            if current is None:
                raise NotFound(f"{self.kind} {object_id!r} version {obj.version} not found")
            self.refuse_published(current)
            stored = obj.model_copy(update={"is_published": False, "last_modification_timestamp": now_ms()})
            pipe.multi()  # type: ignore[no-untyped-call]
            self.stage(pipe, stored)
            return stored
        return await self._write([self.key(object_id)], build)

    def refuse_published(self, obj: M) -> None:
        """``Conflict`` when ``obj`` is a published version: those cannot change."""
        if not obj.is_published:
            return
        if isinstance(obj, ChatAgent):
            raise Conflict(f"agent {obj.agent_id!r} version {obj.version} is published and cannot be changed: make "
                           f"a draft of it with POST /create-agent-version/{obj.agent_id} "
                           f"{{\"base_version\": {obj.version}}}")
        raise Conflict(f"retell llm {obj.llm_id!r} version {obj.version} is published (with an agent version) and "
                       "cannot be changed: make a draft of that agent version (POST /create-agent-version/<agent_id>),"
                       " which makes a new draft of this LLM to edit")

    async def delete_version(self, object_id: str, version: int) -> None:
        """Delete one version: ``NotFound`` without it, ``Conflict`` when it is the only one."""
        async def build(pipe: Pipeline) -> None:
            versions = await self.read_all(pipe, object_id)
            if version not in versions:
                raise NotFound(f"{self.kind} {object_id!r} version {version} not found")
            if len(versions) == 1:
                raise Conflict(f"version {version} is the only version of {self.kind} {object_id!r}: delete the "
                               f"{self.kind} itself instead")
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.hdel(self.key(object_id), str(version))
        await self._write([self.key(object_id)], build)

    async def _write(self, watched: list[str], build: Callable[[Pipeline], Awaitable[T]]) -> T:
        self._recent.clear()
        try:
            return await _transaction(self._redis, watched, build)
        finally:
            self._recent.clear()

    def forget(self) -> None:
        """Drop this process's cached reads (after a write made elsewhere in this module)."""
        self._recent.clear()

    async def delete(self, object_id: str) -> bool:
        self._recent.clear()
        return await _delete_indexed(self._redis, self.key(object_id), self._index, object_id)

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
        """Store what the files declare, published (a changed file becomes a new version), each agent version
        naming its LLM version."""
        for agent in files.agents.values():
            llm = agent.retell_llm
            if llm is not None:
                stored = await self.llms.append(llm, published=True, unless_unchanged=True)
                agent = agent.model_copy(update={
                    "retell_llm": None, "response_engine": ResponseEngine(llm_id=llm.llm_id, version=stored.version)})
            await self.agents.append(agent, published=True, unless_unchanged=True)
        for number in files.numbers.values():
            await self.put_number(number)

    async def resolve(self, agent_id: str, version: AgentVersion | None = None,
                      llm_version: int | None = None) -> Agent:
        """The agent at ``version`` (a Retell version reference; None: the latest) with its LLM at ``llm_version``
        (else the version the agent names, else the latest)."""
        config = await self.agents.find(agent_id, version)
        if config.response_engine is None:
            raise NotFound(f"agent {agent_id!r} has no response_engine")
        engine = config.response_engine
        llm = await self.llms.get(engine.llm_id, llm_version if llm_version is not None else engine.version)
        return Agent(config=config, llm=llm)

    async def draft_from(self, agent_id: str, base_version: int) -> ChatAgent:
        """A new draft agent version copying ``base_version``, with a new draft copy of the LLM version that one
        names (an agent version and its LLM version go together), written in one transaction."""
        async def build(pipe: Pipeline) -> ChatAgent:
            versions = await self.agents.read_all(pipe, agent_id)
            base = _version_of(versions, "agent", agent_id, base_version)
            engine, llm, llms = await self._llm_of(pipe, base)
            stamp = now_ms()
            draft_llm = llm.model_copy(update={"version": max(llms) + 1, "is_published": False,
                                               "last_modification_timestamp": stamp})
            draft = base.model_copy(update={
                "version": max(versions) + 1, "is_published": False, "base_version": base.version,
                "version_title": None, "version_description": None, "last_modification_timestamp": stamp,
                "response_engine": engine.model_copy(update={"version": draft_llm.version})})
            pipe.multi()  # type: ignore[no-untyped-call]
            self.llms.stage(pipe, draft_llm)
            self.agents.stage(pipe, draft)
            return draft
        return await self._together(agent_id, build)

    async def publish_version(self, agent_id: str, version: int, *, title: str | None = None,
                              description: str | None = None) -> ChatAgent:
        """Publish the draft ``version`` in place, and the LLM version it names with it (pinned if it named none);
        ``Conflict`` when it is already published."""
        async def build(pipe: Pipeline) -> ChatAgent:
            draft = _version_of(await self.agents.read_all(pipe, agent_id), "agent", agent_id, version)
            if draft.is_published:
                raise Conflict(f"agent {agent_id!r} version {version} is already published")
            engine, llm, _ = await self._llm_of(pipe, draft)
            stamp = now_ms()
            published = draft.model_copy(update={
                "is_published": True, "last_modification_timestamp": stamp,
                "version_title": title if title is not None else draft.version_title,
                "version_description": description if description is not None else draft.version_description,
                "response_engine": engine.model_copy(update={"version": llm.version})})
            pipe.multi()  # type: ignore[no-untyped-call]
            if not llm.is_published:
                self.llms.stage(pipe, llm.model_copy(update={"is_published": True,
                                                             "last_modification_timestamp": stamp}))
            self.agents.stage(pipe, published)
            return published
        return await self._together(agent_id, build)

    async def _llm_of(self, pipe: Pipeline, agent: ChatAgent) -> tuple[ResponseEngine, RetellLLM, dict[int, RetellLLM]]:
        """The agent version's response engine, the LLM version it names (the latest when it names none) and all
        that LLM's versions, read in the transaction; ``Conflict`` when that LLM version is gone."""
        engine = agent.response_engine
        if engine is None:
            raise Conflict(f"agent {agent.agent_id!r} version {agent.version} has no response_engine")
        await pipe.watch(self.llms.key(engine.llm_id))
        llms = await self.llms.read_all(pipe, engine.llm_id)
        number = engine.version if engine.version is not None else max(llms, default=None)
        if number is None or number not in llms:
            raise Conflict(f"agent {agent.agent_id!r} version {agent.version} names retell llm {engine.llm_id!r}"
                           + (f" version {number}" if number is not None else "") + ", which is gone")
        return engine, llms[number], llms

    async def _together(self, agent_id: str, build: Callable[[Pipeline], Awaitable[ChatAgent]]) -> ChatAgent:
        self.agents.forget()
        self.llms.forget()
        try:
            return await _transaction(self._redis, [self.agents.key(agent_id)], build)
        finally:
            self.agents.forget()
            self.llms.forget()

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


def _version_of(versions: dict[int, M], kind: str, object_id: str, version: int) -> M:
    if not versions:
        raise NotFound(f"{kind} {object_id!r} not found")
    if version not in versions:
        raise NotFound(f"{kind} {object_id!r} version {version} not found")
    return versions[version]


def pick_agent(choices: list[AgentWeight], rng: random.Random | None = None) -> AgentWeight | None:
    """One of ``choices`` at random, proportional to weight (Retell's rule); None when empty."""
    if not choices:
        return None
    return (rng or random).choices(choices, weights=[c.weight for c in choices], k=1)[0]
