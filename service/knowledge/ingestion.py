"""Ingestion, in the background: sources read, chunked, embedded and stored; URL sources refreshed daily; vectors
re-embedded when the embedding model changes. Never in a request: the API stores sources as ``pending`` and
schedules the knowledge base; ``Ingestion.tick`` (run by ``tasks.every`` from ``create_app``, in processes that
run workers) does the work.

**Claiming.** Work is claimed from ``{knowledge}:due`` (knowledge base id -> when), one knowledge base at a time:
claiming moves its score a lease ahead (``PARLEY_KNOWLEDGE_LEASE_MS``), in one script, so two processes never
work on one knowledge base at once; the holder renews the lease while it works. A process that dies mid-ingestion leaves
the member due when the lease runs out, and the next process finds the sources still ``pending`` (a source is
written complete with its chunks in one script) and carries on. A holder that stalled past its lease may still
finish a source another process also did: the commit replaces the source's chunks whole, so the result is the
same. ``recover`` schedules, at start, every knowledge base that has work (a crash between storing sources and
scheduling them).

**Failures.** A source that cannot be read (a URL refused by the outbound policy, a 404, too large, a content
type Parley does not read, a file no parser reads) is marked ``error`` with the reason, and the knowledge base
reports ``error``; its other sources are searchable. An embeddings endpoint that fails leaves the source
pending with the reason, and the knowledge base is tried again after ``RETRY_MS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
import numpy as np

from service.clock import now_ms
from service.errors import EmbeddingError, NotFound, OutboundRefused, SourceError
from service.knowledge import parsing
from service.knowledge.chunking import chunk
from service.knowledge.embeddings import Embedder
from service.knowledge.index import term_counts
from service.knowledge.models import DocumentSource, TextSource, UrlSource
from service.knowledge.store import Chunk, KnowledgeStore, Snapshot
from service.metrics import Metrics
from service.outbound import fetch
from service.settings import Settings

log = logging.getLogger(__name__)

RETRY_MS = 30_000
REFRESH_MS = 86_400_000        # enable_auto_refresh: URL sources again every day
ACCEPT = "text/html, text/plain, text/markdown, text/csv, application/pdf, application/xhtml+xml;q=0.9, */*;q=0.1"

AnySource = DocumentSource | TextSource | UrlSource


class Ingestion:
    """The ingestion loop's work (``tick``) and what the API asks of it (``schedule``)."""

    def __init__(self, settings: Settings, store: KnowledgeStore, embedder: Embedder,
                 http: aiohttp.ClientSession, metrics: Metrics) -> None:
        self._metrics = metrics
        self._settings = settings
        self._store = store
        self._embedder = embedder
        self._http = http

    async def recover(self) -> int:
        """Schedule every knowledge base with work left (pending sources, vectors of another model, a refresh);
        run at start. Answers how many."""
        count = 0
        for kb_id in await self._store.ids():
            try:
                snap = await self._store.snapshot(kb_id)
            except NotFound:
                continue
            work = self._has_work(snap)
            if work or self._refresh_due(snap) is not None:
                # Only if not due already: a knowledge base another process holds keeps its lease.
                count += await self._store.due.schedule(kb_id, None if work else self._refresh_due(snap), only_new=True)
        return count

    async def tick(self) -> int:
        """Work on one due knowledge base; 1 if there was one."""
        claimed = await self._store.due.claim(now_ms(), self._settings.knowledge_lease_ms)
        if claimed is None:
            return 0
        kb_id, leased = claimed
        async with self._lease(kb_id, leased) as lease:
            try:
                when = await self._work(kb_id)
            except NotFound:   # deleted while it was worked on: nothing left to do (delete removed it from due)
                return 1
        await self._store.due.release(kb_id, lease[0], when)
        return 1

    @contextlib.asynccontextmanager
    async def _lease(self, kb_id: str, leased: int) -> AsyncIterator[list[int]]:
        """Keeps the claim alive while the work runs; yields the current lease score (a one-item list)."""
        current = [leased]
        lease_ms = self._settings.knowledge_lease_ms

        async def renew() -> None:
            while True:
                await asyncio.sleep(lease_ms / 3000)
                current[0] = await self._store.due.extend(kb_id, current[0], now_ms() + lease_ms)

        task = asyncio.create_task(renew(), name=f"parley-kb-lease-{kb_id}")
        try:
            yield current
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _has_work(self, snap: Snapshot) -> bool:
        pending = any(s.status == "pending" for s in snap.sources.values())
        return pending or self._needs_reembedding(snap)

    def _needs_reembedding(self, snap: Snapshot) -> bool:
        return bool(snap.model) and snap.model != self._embedder.model

    def _refresh_due(self, snap: Snapshot) -> int | None:
        """When the URL sources are next refreshed (None: never)."""
        record = snap.record
        if not record.enable_auto_refresh or not any(isinstance(s, UrlSource) for s in snap.sources.values()):
            return None
        return (record.last_refreshed_timestamp or 0) + REFRESH_MS

    async def _work(self, kb_id: str) -> int | None:
        """Do what the knowledge base needs; answers when it next needs work (None: not until asked). ``NotFound``
        when it was deleted meanwhile."""
        snap = await self._store.snapshot(kb_id)
        if (due := self._refresh_due(snap)) is not None and due <= now_ms():
            for source in snap.sources.values():
                if isinstance(source, UrlSource) and source.status != "pending":
                    await self._store.put_source(kb_id, source.model_copy(update={"status": "pending"}))
            snap = await self._store.snapshot(kb_id)
        pending = [s for s in snap.sources.values() if s.status == "pending"]
        try:
            if self._needs_reembedding(snap):
                await self._reembed(kb_id)
            for source in pending:
                await self._ingest(snap, source)
        except EmbeddingError as exc:
            log.warning("knowledge base ingestion waits for the embeddings endpoint",
                        extra={"knowledge_base_id": kb_id, "error": str(exc)})
            return now_ms() + RETRY_MS
        snap = await self._store.snapshot(kb_id)
        if any(s.status == "pending" for s in snap.sources.values()):
            return now_ms()   # added while this pass ran: at once
        if pending or not snap.record.ingested_once:   # a pass that read sources (a refresh too): its time
            snap.record.ingested_once = True
            snap.record.last_refreshed_timestamp = now_ms()
            await self._store.put_record(snap.record)
        return self._refresh_due(snap)

    async def _ingest(self, snap: Snapshot, source: AnySource) -> None:
        kb_id = snap.record.knowledge_base_id
        try:
            text = await self._text(kb_id, source)
            pieces = chunk(text, _title(source), min_size=snap.record.min_chunk_size,
                           max_size=snap.record.max_chunk_size)
            held = sum(s.chunk_count for s in snap.sources.values() if s.source_id != source.source_id)
            if held + len(pieces) > self._settings.knowledge_max_chunks:
                raise SourceError(f"{_title(source)}: {len(pieces)} chunks would pass the knowledge base's limit of "
                                  f"{self._settings.knowledge_max_chunks} (PARLEY_KNOWLEDGE_MAX_CHUNKS)")
        except SourceError as exc:
            log.warning("knowledge base source failed", extra={"knowledge_base_id": kb_id,
                                                               "source_id": source.source_id, "error": str(exc)})
            await self._store.put_source(kb_id, source.model_copy(update={
                "status": "error", "error_message": str(exc), "chunk_count": 0}))
            self._metrics.knowledge_sources.labels("error").inc()
            return
        try:
            vectors = await self._embedder.embed([f"{p.title}\n{p.text}" for p in pieces])
        except EmbeddingError as exc:
            await self._store.put_source(kb_id, source.model_copy(update={"error_message": f"waiting: {exc}"}))
            raise
        chunks = [(Chunk(p.title, p.text, term_counts(f"{p.title}\n{p.text}")), row.astype(np.float32).tobytes())
                  for p, row in zip(pieces, vectors, strict=True)]
        done = source.model_copy(update={"status": "complete", "error_message": None, "chunk_count": len(chunks)})
        result = await self._store.commit(kb_id, done, source.chunk_count, self._embedder.model, chunks)
        if result == -1:   # the stored vectors are another model's: re-embed them, then write this source
            await self._reembed(kb_id)
            result = await self._store.commit(kb_id, done, source.chunk_count, self._embedder.model, chunks)
        self._metrics.knowledge_sources.labels("complete").inc()
        log.info("knowledge base source ingested", extra={"knowledge_base_id": kb_id, "source_id": source.source_id,
                                                          "chunks": len(chunks), "written": result == 1})

    async def _text(self, kb_id: str, source: AnySource) -> str:
        if isinstance(source, UrlSource):
            data, kind = await self._download(source.url)
            return await asyncio.to_thread(parsing.text_of, data, kind, source.url)
        raw = await self._store.raw(kb_id, source.source_id)
        if raw is None:
            raise SourceError(f"{_title(source)}: its content is no longer stored: delete the source and add it "
                              "again")
        if isinstance(source, TextSource):
            return raw.decode("utf-8", "replace")
        kind = parsing.kind_of(source.filename)
        return await asyncio.to_thread(parsing.text_of, raw, kind, source.filename)   # PDFs take CPU: off the loop

    async def _download(self, url: str) -> tuple[bytes, str]:
        """A URL source's body and how to read it, through the outbound policy, within the size and time limits."""
        limit, timeout_s = self._settings.knowledge_url_max_bytes, self._settings.knowledge_url_timeout_s
        try:
            answer = await fetch(self._http, "GET", url, timeout_s=timeout_s, max_bytes=limit,
                                 headers={"Accept": ACCEPT, "User-Agent": "Parley knowledge base"})
        except OutboundRefused as exc:
            raise SourceError(f"{url}: {exc}") from exc
        except TimeoutError as exc:
            raise SourceError(f"{url}: no complete answer within {timeout_s:g} s (PARLEY_KNOWLEDGE_URL_TIMEOUT_S)"
                              ) from exc
        except aiohttp.ClientError as exc:
            raise SourceError(f"{url}: could not be fetched: {type(exc).__name__}: {exc}") from exc
        if answer.status != 200:
            raise SourceError(f"{url}: answered HTTP {answer.status}, not 200")
        if answer.truncated:
            raise SourceError(f"{url}: larger than {limit} bytes (PARLEY_KNOWLEDGE_URL_MAX_BYTES)")
        try:
            kind = parsing.kind_of(None, answer.content_type)
        except SourceError:
            raise SourceError(f"{url}: answered {answer.content_type!r}; Parley reads text/html, text/plain, "
                              "text/markdown, text/csv, application/pdf and Word documents") from None
        return answer.body, kind

    async def _reembed(self, kb_id: str) -> None:
        """Every stored chunk embedded again with the current model, swapped in at once when done."""
        chunks = await self._store.chunks(kb_id)
        ids = sorted(chunks)
        batch = max(self._embedder.batch, 1)
        for start in range(0, len(ids), batch):
            part = ids[start:start + batch]
            rows = await self._embedder.embed([f"{chunks[c].title}\n{chunks[c].text}" for c in part])
            await self._store.stage_vectors(kb_id, {c: r.tobytes() for c, r in zip(part, rows, strict=True)},
                                            first=start == 0)
        await self._store.swap_vectors(kb_id, self._embedder.model)
        log.info("knowledge base re-embedded", extra={"knowledge_base_id": kb_id, "chunks": len(ids),
                                                      "model": self._embedder.model})


def _title(source: AnySource) -> str:
    if isinstance(source, DocumentSource):
        return source.filename
    return source.title if isinstance(source, TextSource) else source.url
