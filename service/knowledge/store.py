"""A knowledge base's record, sources and chunks in Redis (the keys: ``storage.keys``, ``{kb:<id>}``).

Every key of one knowledge base carries its hash tag, so each change that spans them (a source and its chunks,
a deletion, a re-embedding swapped in) is one MULTI or one script, on one slot of a Redis Cluster. The list of
knowledge bases and the work queue are in ``{knowledge}``, written after the knowledge base itself; a crash
between the two leaves work that ``Ingestion.recover`` finds at the next start.

The status Retell reports is not stored: it follows from the sources' own states (``status_of``), so no
write can leave it stale. ``version`` is bumped by every change of the searchable chunks; searchers read it
(one HGET per knowledge base per turn) to know when their cached matrices are stale.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import TypeAdapter

from service.errors import NotFound
from service.knowledge.due import WorkQueue
from service.knowledge.models import DocumentSource, KnowledgeBaseResponse, Source, Status, TextSource, UrlSource
from service.storage import keys

READ_ATTEMPTS = 3   # reads of a knowledge base being written to before the searcher takes what it read
SOURCE = TypeAdapter[DocumentSource | TextSource | UrlSource](Source)


@dataclass(slots=True)
class Record:
    """A knowledge base's own fields (``{kb:K}:kb`` ``record``)."""

    knowledge_base_id: str
    knowledge_base_name: str
    max_chunk_size: int
    min_chunk_size: int
    enable_auto_refresh: bool = False
    created_ms: int = 0
    last_refreshed_timestamp: int | None = None
    declared_in: str | None = None      # the folder under agents/ that declares it (read-only through the API)
    ingested_once: bool = False         # every source was ingested once (later work is a refresh)

    def dumps(self) -> bytes:
        return orjson.dumps(asdict(self))


@dataclass(slots=True)
class Chunk:
    """One searchable piece of a source: its title (the source's, and the heading it sits under), its text, and
    its term counts (the keyword side of the search)."""

    title: str
    text: str
    terms: dict[str, int]

    def dumps(self) -> bytes:
        return orjson.dumps({"title": self.title, "text": self.text, "terms": self.terms})

    @classmethod
    def loads(cls, raw: bytes | str) -> Chunk:
        data = orjson.loads(raw)
        return cls(title=data["title"], text=data["text"], terms=data["terms"])


@dataclass(slots=True)
class Snapshot:
    """A knowledge base as read in one round trip."""

    record: Record
    sources: dict[str, DocumentSource | TextSource | UrlSource]
    version: int
    model: str


def status_of(record: Record, sources: Iterable[DocumentSource | TextSource | UrlSource]) -> Status:
    """Retell's status: ``in_progress`` until the first ingestion pass has ended, ``refreshing_in_progress`` while
    later work is pending; a failed source makes it ``error`` (the others stay searchable); else ``complete``."""
    states = {source.status for source in sources}
    if not record.ingested_once:   # until the first pass has ended (its time written), whatever its sources say
        return "in_progress"
    if "pending" in states:
        return "refreshing_in_progress"
    return "error" if "error" in states else "complete"


def chunk_id(source_id: str, n: int) -> str:
    return f"{source_id}:{n}"


# KEYS: kb, sources, chunks, vectors, raw.  ARGV: source id, source JSON, old chunk count, model, then
# chunk id, chunk JSON, vector bytes triples. Writes a source's chunks in place of its old ones; answers 0 (and
# writes nothing) when the source was deleted meanwhile, -1 when the knowledge base's vectors are from another
# model (re-embed first), else 1.
_COMMIT = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
local model = redis.call('HGET', KEYS[1], 'model')
if model and model ~= '' and model ~= ARGV[4] then return -1 end
local old = tonumber(ARGV[3])
local new = (#ARGV - 4) / 3
for n = new, old - 1 do
  redis.call('HDEL', KEYS[3], ARGV[1] .. ':' .. n)
  redis.call('HDEL', KEYS[4], ARGV[1] .. ':' .. n)
end
for i = 5, #ARGV, 3 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 2])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], 'model', ARGV[4])
redis.call('DEL', KEYS[5])
redis.call('HINCRBY', KEYS[1], 'version', 1)
return 1
"""

# KEYS: kb, vectors, vectors:next, chunks.  ARGV: model. The re-embedded vectors replace the old ones; vectors of
# chunks deleted meanwhile are dropped; a knowledge base deleted meanwhile is left deleted.
_SWAP = """
if redis.call('HEXISTS', KEYS[1], 'record') == 0 then redis.call('DEL', KEYS[3]) return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('RENAME', KEYS[3], KEYS[2]) else redis.call('DEL', KEYS[2]) end
for _, id in ipairs(redis.call('HKEYS', KEYS[2])) do
  if redis.call('HEXISTS', KEYS[4], id) == 0 then redis.call('HDEL', KEYS[2], id) end
end
redis.call('HSET', KEYS[1], 'model', ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'version', 1)
"""


class KnowledgeStore:
    """Knowledge bases in Redis."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._commit = redis.register_script(_COMMIT)
        self._swap = redis.register_script(_SWAP)
        self.due = WorkQueue(redis)

    async def ids(self) -> list[str]:
        return sorted(str(i) for i in await self._redis.smembers(keys.KNOWLEDGE_BASES))

    async def exists(self, kb_id: str) -> bool:
        return bool(await self._redis.hexists(keys.kb(kb_id), "record"))

    async def snapshot(self, kb_id: str) -> Snapshot:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.kb(kb_id), ["record", "version", "model"])
            pipe.hgetall(keys.kb_sources(kb_id))
            (raw, version, model), sources = await pipe.execute()
        if raw is None:
            raise NotFound(f"knowledge base {kb_id!r} not found")
        found = {str(sid): SOURCE.validate_json(body) for sid, body in sources.items()}
        ordered = dict(sorted(found.items(), key=lambda item: item[0]))
        return Snapshot(Record(**orjson.loads(raw)), ordered, int(version or 0), str(model or ""))

    async def response(self, kb_id: str) -> KnowledgeBaseResponse:
        return await self.describe(await self.snapshot(kb_id))

    async def describe(self, snap: Snapshot) -> KnowledgeBaseResponse:
        """Retell's object for a snapshot, with Parley's additive fields."""
        sources = list(snap.sources.values())
        errors = [f"{_name(s)}: {s.error_message}" for s in sources if s.status == "error" and s.error_message]
        record = snap.record
        return KnowledgeBaseResponse(
            knowledge_base_id=record.knowledge_base_id, knowledge_base_name=record.knowledge_base_name,
            status=status_of(record, sources), enable_auto_refresh=record.enable_auto_refresh,
            knowledge_base_sources=sources, last_refreshed_timestamp=record.last_refreshed_timestamp,
            max_chunk_size=record.max_chunk_size, min_chunk_size=record.min_chunk_size,
            error_messages=errors or None, chunk_count=sum(s.chunk_count for s in sources),
            embedding_model=snap.model or None)

    async def create(self, record: Record, sources: list[tuple[DocumentSource | TextSource | UrlSource,
                                                                 bytes | None]]) -> None:
        """Store a new knowledge base and its sources (pending), and list it."""
        await self._redis.sadd(keys.KNOWLEDGE_BASES, record.knowledge_base_id)
        kb_id = record.knowledge_base_id
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.kb(kb_id), mapping={"record": record.dumps(), "version": 0, "model": ""})
            self._stage_sources(pipe, kb_id, sources)
            await pipe.execute()

    async def put_record(self, record: Record) -> None:
        """Update a knowledge base's own fields, unless it was deleted meanwhile (then nothing is written)."""
        await self._redis.eval(
            "if redis.call('HEXISTS', KEYS[1], 'record') == 1 then redis.call('HSET', KEYS[1], 'record', ARGV[1]) "
            "end return 0", 1, keys.kb(record.knowledge_base_id), record.dumps())

    async def add_sources(self, kb_id: str, sources: list[tuple[DocumentSource | TextSource | UrlSource,
                                                                bytes | None]]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            self._stage_sources(pipe, kb_id, sources)
            await pipe.execute()

    def _stage_sources(self, pipe: Any, kb_id: str,
                       sources: list[tuple[DocumentSource | TextSource | UrlSource, bytes | None]]) -> None:
        if sources:
            pipe.hset(keys.kb_sources(kb_id), mapping={s.source_id: s.model_dump_json() for s, _ in sources})
        for source, raw in sources:
            if raw is not None:
                pipe.set(keys.kb_raw(kb_id, source.source_id), raw)

    async def put_source(self, kb_id: str, source: DocumentSource | TextSource | UrlSource) -> bool:
        """Update a source's fields (its state, its error) if it still exists."""
        written = await self._redis.eval(
            "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return redis.call('HSET', KEYS[1], ARGV[1], "
            "ARGV[2]) + 1 end return 0", 1, keys.kb_sources(kb_id), source.source_id, source.model_dump_json())
        return bool(written)

    async def raw(self, kb_id: str, source_id: str) -> bytes | None:
        # Bytes as stored: the connection decodes answers as UTF-8, which a PDF is not.
        found = await self._redis.execute_command(  # type: ignore[no-untyped-call]
            "GET", keys.kb_raw(kb_id, source_id), NEVER_DECODE=True)
        return found if isinstance(found, bytes) or found is None else bytes(found)

    async def commit(self, kb_id: str, source: DocumentSource | TextSource | UrlSource, old_count: int, model: str,
                     chunks: list[tuple[Chunk, bytes]]) -> int:
        """Write ``source`` (complete) and its chunks with their vectors in place of its ``old_count`` chunks:
        1 done, 0 the source is gone, -1 the knowledge base's vectors are from another model."""
        args: list[Any] = [source.source_id, source.model_dump_json(), old_count, model]
        for n, (chunk, vector) in enumerate(chunks):
            args += [chunk_id(source.source_id, n), chunk.dumps(), vector]
        kb_keys = [keys.kb(kb_id), keys.kb_sources(kb_id), keys.kb_chunks(kb_id), keys.kb_vectors(kb_id),
                   keys.kb_raw(kb_id, source.source_id)]
        return int(await self._commit(keys=kb_keys, args=args))

    async def chunks(self, kb_id: str) -> dict[str, Chunk]:
        found = await self._redis.hgetall(keys.kb_chunks(kb_id))
        return {str(cid): Chunk.loads(body) for cid, body in found.items()}

    async def stage_vectors(self, kb_id: str, vectors: dict[str, bytes], *, first: bool) -> None:
        """Part of a re-embedding: vectors written beside the current ones until ``swap_vectors``."""
        async with self._redis.pipeline(transaction=True) as pipe:
            if first:
                pipe.delete(keys.kb_vectors_next(kb_id))
            if vectors:
                pipe.hset(keys.kb_vectors_next(kb_id), mapping=vectors)   # type: ignore[arg-type]
            await pipe.execute()

    async def swap_vectors(self, kb_id: str, model: str) -> None:
        await self._swap(keys=[keys.kb(kb_id), keys.kb_vectors(kb_id), keys.kb_vectors_next(kb_id),
                               keys.kb_chunks(kb_id)], args=[model])

    async def delete_source(self, kb_id: str, source_id: str) -> None:
        snap = await self.snapshot(kb_id)
        source = snap.sources.get(source_id)
        if source is None:
            raise NotFound(f"knowledge base {kb_id!r} has no source {source_id!r}")
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.kb_sources(kb_id), source_id)
            pipe.delete(keys.kb_raw(kb_id, source_id))
            # Chunk ids are "<source id>:<n>", n < its count; a commit in flight for it writes nothing (the
            # script checks that the source exists).
            ids = [chunk_id(source_id, n) for n in range(source.chunk_count)]
            if ids:
                pipe.hdel(keys.kb_chunks(kb_id), *ids)
                pipe.hdel(keys.kb_vectors(kb_id), *ids)
            pipe.hincrby(keys.kb(kb_id), "version", 1)
            await pipe.execute()

    async def delete(self, kb_id: str) -> None:
        snap = await self.snapshot(kb_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.kb(kb_id), keys.kb_sources(kb_id), keys.kb_chunks(kb_id), keys.kb_vectors(kb_id),
                        keys.kb_vectors_next(kb_id), *(keys.kb_raw(kb_id, sid) for sid in snap.sources))
            await pipe.execute()
        await self._redis.srem(keys.KNOWLEDGE_BASES, kb_id)
        await self._redis.zrem(keys.KNOWLEDGE_DUE, kb_id)

    async def versions(self, kb_ids: list[str]) -> list[tuple[int, str] | None]:
        """Each knowledge base's (version, model), in one round trip (None: no such knowledge base)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for kb_id in kb_ids:
                pipe.hmget(keys.kb(kb_id), ["version", "model"])
            found = await pipe.execute()
        return [None if version is None else (int(version), str(model or "")) for version, model in found]

    async def searchable(self, kb_id: str) -> tuple[int, str, dict[str, str], dict[str, bytes]]:
        """Everything a searcher caches: version, model, chunks (as stored: ``Chunk.loads`` reads them) and
        vectors, read at one version (read again, up to
        ``READ_ATTEMPTS`` times, if a write came between the reads; then as read, with version -1 so that the next
        search reads again). Vectors are read as bytes (``NEVER_DECODE``), one command each, since the connection
        decodes answers as UTF-8 and a pipeline cannot ask for bytes."""
        for _ in range(READ_ATTEMPTS):
            version, model = (await self.versions([kb_id]))[0] or (0, "")
            chunks = {str(k): str(v) for k, v in (await self._redis.hgetall(keys.kb_chunks(kb_id))).items()}
            raw = await self._redis.execute_command(  # type: ignore[no-untyped-call]
                "HGETALL", keys.kb_vectors(kb_id), NEVER_DECODE=True)
            vectors = {k.decode(): v for k, v in (raw or {}).items()}
            if (await self.versions([kb_id]))[0] == (version, model):
                return version, model, chunks, vectors
        return -1, model, chunks, vectors


def _name(source: DocumentSource | TextSource | UrlSource) -> str:
    if isinstance(source, DocumentSource):
        return source.filename
    return source.title if isinstance(source, TextSource) else source.url
