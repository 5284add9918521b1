"""Agents, their response engines (Retell LLMs, conversation flows), shared flow components and phone numbers
in Redis: written from the files at start and by the API.

Agents, LLMs and flows are versioned as Retell versions them: ``agent:<id>``, ``llm:<id>`` and ``flow:<id>`` are
hashes of version -> JSON, numbered from 0. A version is a draft (an update edits it in place) or published
(frozen). ``/create-agent-version`` copies a version into a new draft, ``/publish-agent-version`` publishes a
draft. An agent version names the version of its response engine (``response_engine.version``), and the two go
together: a new agent draft gets a new draft of its engine's version, and publishing the agent publishes its
engine's version. A chat records the agent version and the engine version it started with (``llm_version``,
whichever engine it is). Shared components (``component:<id>``) are not versioned, as in Retell.

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

from service.catalog import components
from service.catalog.agent_files import Declared
from service.catalog.cache import Parsed
from service.clock import now_ms
from service.errors import Conflict, NotFound
from service.retell.flows import ConversationFlow, ConversationFlowComponent
from service.retell.models import AgentVersion, AgentWeight, ChatAgent, PhoneNumber, ResponseEngine, RetellLLM
from service.storage import keys
from service.storage.locks import Locks
from service.storage.recent import Recent

M = TypeVar("M", ChatAgent, RetellLLM, ConversationFlow)
Engine = RetellLLM | ConversationFlow
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


async def _put_indexed(redis: aioredis.Redis, key: str, value: str, index: str, member: str) -> None:
    """Write ``key`` and add its ``member`` to the ``index`` set together."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(key, value)
        pipe.sadd(index, member)
        await pipe.execute()


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
        raise Conflict(f"{self.kind} {self._id(obj)!r} version {obj.version} is published (with an agent version) "
                       "and cannot be changed: make a draft of that agent version (POST /create-agent-version/"
                       f"<agent_id>), which makes a new draft of this {self.kind} to edit")

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
        if isinstance(obj, ChatAgent):
            return obj.agent_id
        return obj.llm_id if isinstance(obj, RetellLLM) else obj.conversation_flow_id


@dataclass(frozen=True, slots=True)
class Agent:
    """An agent version together with the response engine version it answers with: a Retell LLM (``llm``) or a
    conversation flow (``flow``), exactly one."""

    config: ChatAgent
    llm: RetellLLM | None = None
    flow: ConversationFlow | None = None

    @property
    def engine(self) -> Engine:
        engine = self.llm if self.llm is not None else self.flow
        assert engine is not None, "an agent answers with a Retell LLM or a conversation flow"
        return engine

    @staticmethod
    def of(config: ChatAgent, engine: Engine) -> Agent:
        if isinstance(engine, RetellLLM):
            return Agent(config=config, llm=engine)
        return Agent(config=config, flow=engine)


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
        self.flows: Versioned[ConversationFlow] = Versioned(redis, ConversationFlow, keys.flow, keys.FLOWS,
                                                            "conversation flow", cache_ms=cache_ms)
        self._components: Recent[ConversationFlowComponent | None] = Recent(cache_ms)
        self._parse_component = Parsed(ConversationFlowComponent)

    def engines(self, engine: ResponseEngine) -> Versioned[RetellLLM] | Versioned[ConversationFlow]:
        """Where the engine a ``response_engine`` names is kept."""
        return self.flows if engine.is_flow else self.llms

    async def publish(self, files: Declared) -> None:
        """Store what the files declare, published (a changed file becomes a new version), each agent version
        naming its LLM version."""
        for agent in files.agents.values():
            stored: Engine | None = None
            if agent.retell_llm is not None:
                stored = await self.llms.append(agent.retell_llm, published=True, unless_unchanged=True)
            elif agent.conversation_flow is not None:
                stored = await self.flows.append(agent.conversation_flow, published=True, unless_unchanged=True)
            if stored is not None:
                agent = agent.model_copy(update={"retell_llm": None, "conversation_flow": None,
                                                 "response_engine": ResponseEngine.of(stored)})
            await self.agents.append(agent, published=True, unless_unchanged=True)
        for number in files.numbers.values():
            await self.put_number(number)

    async def resolve(self, agent_id: str, version: AgentVersion | None = None,
                      llm_version: int | None = None) -> Agent:
        """The agent at ``version`` (a Retell version reference; None: the latest) with its response engine at
        ``llm_version`` (else the version the agent names, else the latest)."""
        config = await self.agents.find(agent_id, version)
        if config.response_engine is None:
            raise NotFound(f"agent {agent_id!r} has no response_engine")
        engine = config.response_engine
        found = await self.engines(engine).get(engine.engine_id,
                                               llm_version if llm_version is not None else engine.version)
        return Agent.of(config, found)

    async def draft_from(self, agent_id: str, base_version: int) -> ChatAgent:
        """A new draft agent version copying ``base_version``, with a new draft copy of the engine version that
        one names (an agent version and its engine version go together), written in one transaction."""
        async def build(pipe: Pipeline) -> ChatAgent:
            versions = await self.agents.read_all(pipe, agent_id)
            base = _version_of(versions, "agent", agent_id, base_version)
            engine, current, all_versions = await self._engine_of(pipe, base)
            stamp = now_ms()
            draft_engine = current.model_copy(update={"version": max(all_versions) + 1, "is_published": False,
                                                      "last_modification_timestamp": stamp})
            draft = base.model_copy(update={
                "version": max(versions) + 1, "is_published": False, "base_version": base.version,
                "version_title": None, "version_description": None, "last_modification_timestamp": stamp,
                "response_engine": engine.model_copy(update={"version": draft_engine.version})})
            pipe.multi()  # type: ignore[no-untyped-call]
            self._stage_engine(pipe, draft_engine)
            self.agents.stage(pipe, draft)
            return draft
        return await self._together(agent_id, build)

    async def publish_version(self, agent_id: str, version: int, *, title: str | None = None,
                              description: str | None = None) -> ChatAgent:
        """Publish the draft ``version`` in place, and the engine version it names with it (pinned if it named
        none); ``Conflict`` when it is already published."""
        async def build(pipe: Pipeline) -> ChatAgent:
            draft = _version_of(await self.agents.read_all(pipe, agent_id), "agent", agent_id, version)
            if draft.is_published:
                raise Conflict(f"agent {agent_id!r} version {version} is already published")
            engine, current, _ = await self._engine_of(pipe, draft)
            stamp = now_ms()
            published = draft.model_copy(update={
                "is_published": True, "last_modification_timestamp": stamp,
                "version_title": title if title is not None else draft.version_title,
                "version_description": description if description is not None else draft.version_description,
                "response_engine": engine.model_copy(update={"version": current.version})})
            pipe.multi()  # type: ignore[no-untyped-call]
            if not current.is_published:
                self._stage_engine(pipe, current.model_copy(update={"is_published": True,
                                                                    "last_modification_timestamp": stamp}))
            self.agents.stage(pipe, published)
            return published
        return await self._together(agent_id, build)

    async def _engine_of(self, pipe: Pipeline, agent: ChatAgent) -> tuple[ResponseEngine, Engine, dict[int, Any]]:
        """The agent version's response engine, the engine version it names (the latest when it names none) and
        all that engine's versions, read in the transaction; ``Conflict`` when that version is gone."""
        engine = agent.response_engine
        if engine is None:
            raise Conflict(f"agent {agent.agent_id!r} version {agent.version} has no response_engine")
        store = self.engines(engine)
        await pipe.watch(store.key(engine.engine_id))
        versions = await store.read_all(pipe, engine.engine_id)
        number = engine.version if engine.version is not None else max(versions, default=None)
        if number is None or number not in versions:
            raise Conflict(f"agent {agent.agent_id!r} version {agent.version} names {store.kind} "
                           f"{engine.engine_id!r}" + (f" version {number}" if number is not None else "")
                           + ", which is gone")
        return engine, versions[number], versions

    def _stage_engine(self, pipe: Pipeline, engine: Engine) -> None:
        if isinstance(engine, RetellLLM):
            self.llms.stage(pipe, engine)
        else:
            self.flows.stage(pipe, engine)

    async def _together(self, agent_id: str, build: Callable[[Pipeline], Awaitable[ChatAgent]]) -> ChatAgent:
        stores = (self.agents, self.llms, self.flows)
        for store in stores:
            store.forget()
        try:
            return await _transaction(self._redis, [self.agents.key(agent_id)], build)
        finally:
            for store in stores:
                store.forget()

    async def get_component(self, component_id: str) -> ConversationFlowComponent:
        """The shared component ``component_id``; ``NotFound`` otherwise."""
        found = await self._components.get(component_id, lambda: self._read_component(component_id))
        if found is None:
            raise NotFound(f"conversation flow component {component_id!r} not found")
        return found

    async def _read_component(self, component_id: str) -> ConversationFlowComponent | None:
        raw = await self._redis.get(keys.component(component_id))
        return self._parse_component(str(raw)) if raw else None

    async def put_component(self, component: ConversationFlowComponent) -> ConversationFlowComponent:
        """Store a shared component (a new one, or a replacement), stamped now."""
        self._components.clear()
        component = component.model_copy(update={"user_modified_timestamp": now_ms()})
        component_id = component.conversation_flow_component_id
        await _put_indexed(self._redis, keys.component(component_id), component.model_dump_json(), keys.COMPONENTS,
                           component_id)
        return component

    async def delete_component(self, component_id: str) -> list[str]:
        """Delete the shared component ``component_id`` and, in the same transaction, give every flow version that
        names it a local copy of it instead (Retell's rule: ``catalog.components.with_local_copy``), so no version,
        published or not, loses what it runs. The ids of those flows; ``NotFound`` without the component."""
        async def build(pipe: Pipeline) -> list[str]:
            raw = await pipe.get(keys.component(component_id))
            if not raw:
                raise NotFound(f"conversation flow component {component_id!r} not found")
            shared = self._parse_component(str(raw))
            relinked = [components.with_local_copy(flow, shared)
                        for flow_id in await self.flows.ids()
                        for flow in (await self.flows.read_all(pipe, flow_id)).values()
                        if components.names(flow, component_id)]
            pipe.multi()  # type: ignore[no-untyped-call]
            for flow in relinked:
                self.flows.stage(pipe, flow)
            pipe.delete(keys.component(component_id))
            pipe.srem(keys.COMPONENTS, component_id)
            return sorted({flow.conversation_flow_id for flow in relinked})
        self._components.clear()
        self.flows.forget()
        try:
            return await _transaction(self._redis, [keys.component(component_id)], build)
        finally:
            self._components.clear()
            self.flows.forget()

    async def component_ids(self) -> list[str]:
        return sorted(str(i) for i in await self._redis.smembers(keys.COMPONENTS))

    async def get_number(self, phone_number: str) -> PhoneNumber | None:
        return await self._numbers.get(phone_number, lambda: self._read_number(phone_number))

    async def _read_number(self, phone_number: str) -> PhoneNumber | None:
        raw = await self._redis.get(keys.number(phone_number))
        return self._parse_number(str(raw)) if raw else None

    async def put_number(self, number: PhoneNumber) -> PhoneNumber:
        self._numbers.clear()
        number = number.model_copy(update={"last_modification_timestamp": now_ms()})
        await _put_indexed(self._redis, keys.number(number.phone_number), number.model_dump_json(), keys.NUMBERS,
                           number.phone_number)
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
