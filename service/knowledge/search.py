"""Retrieval: the chunks of some knowledge bases most relevant to a question, ranked by vectors and keywords.

**The score** ``filter_score`` applies to is, for each chunk, three pieces of evidence in 0..1 fused as a noisy
OR, ``1 - (1 - similarity)(1 - keywords)(1 - identifiers)``:

- ``similarity``: the cosine similarity of the question's embedding and the chunk's (negative counts as 0);
- ``keywords``: the chunk's BM25 for the question's terms over what a chunk of average length holding every term
  once scores (``Index.keyword_scores``): 1 when every topical word of the question is there, 0 when none is;
- ``identifiers``: the share of the question's identifiers (a term of 3 or more characters with a digit: a SKU, a
  price, a code) the chunk holds exactly.

Each side alone can carry a chunk over the filter (a paraphrase that shares no word with the chunk on its
similarity, an exact SKU or price that embeddings blur on the identifier), two sides that half agree reinforce
each other (0.5 and 0.5 make 0.75), and a question about something the knowledge base does not hold scores near
0 on all three, so nothing is retrieved (Retell: chunks under ``filter_score`` are left out). The same score
orders the chunks that pass.

**Caching.** Each process keeps one ``Index`` per knowledge base, built from Redis when first asked and rebuilt
when its ``version`` (bumped by every change of its chunks) or its model differs from the one cached: a turn
costs one pipelined round trip of HMGETs for the versions, one embeddings call for the question, and the numpy
work. The vectors of a knowledge base whose model is not the current one (a re-embedding is under way) are not
compared with the question's: its chunks are found by keywords alone until then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.errors import EmbeddingError
from service.knowledge.embeddings import Embedder, Matrix
from service.knowledge.index import Index, terms
from service.knowledge.store import KnowledgeStore
from service.metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 3
DEFAULT_FILTER_SCORE = 0.6


@dataclass(frozen=True, slots=True)
class Hit:
    """A chunk found: where it is from, its text, and its scores (``score`` is what the filter compared)."""

    kb_id: str
    chunk_id: str
    title: str
    text: str
    score: float
    similarity: float
    keywords: float


@dataclass(frozen=True, slots=True)
class Scores:
    best: npt.NDArray[np.float32]       # what filter_score applies to, and the order
    similarity: npt.NDArray[np.float32]
    keywords: npt.NDArray[np.float32]


def rank(index: Index, query_vector: Matrix | None, query_terms: list[str]) -> Scores:
    """Every chunk's scores for one question (pure CPU: what a turn adds besides its round trips)."""
    n = len(index)
    if query_vector is not None and index.vectors is not None and index.vectors.shape[1] == query_vector.shape[0]:
        similarity = np.clip(index.vectors @ query_vector, 0.0, 1.0)
    else:
        similarity = np.zeros(n, dtype=np.float32)
    keywords = index.keyword_scores(query_terms)
    identifiers = index.identifier_scores(query_terms)
    best = 1 - (1 - similarity) * (1 - keywords) * (1 - identifiers)
    return Scores(best=best.astype(np.float32), similarity=similarity, keywords=keywords)


def top(index: Index, scores: Scores, top_k: int, filter_score: float, kb_id: str) -> list[Hit]:
    passing = np.flatnonzero(scores.best >= filter_score)
    if len(passing) > top_k:
        passing = passing[np.argpartition(-scores.best[passing], top_k - 1)[:top_k]]
    ordered = sorted(passing.tolist(), key=lambda row: -float(scores.best[row]))
    return [Hit(kb_id=kb_id, chunk_id=index.ids[row], title=index.titles[row], text=index.texts[row],
                score=round(float(scores.best[row]), 4), similarity=round(float(scores.similarity[row]), 4),
                keywords=round(float(scores.keywords[row]), 4)) for row in ordered]


class Searcher:
    """Knowledge-base search for one process, with its cached indexes."""

    def __init__(self, store: KnowledgeStore, embedder: Embedder, metrics: Metrics) -> None:
        self._metrics = metrics
        self._store = store
        self._embedder = embedder
        self._indexes: dict[str, Index] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    async def _index(self, kb_id: str, version: int, model: str) -> Index:
        cached = self._indexes.get(kb_id)
        if cached is not None and (cached.version, cached.model) == (version, model):
            return cached
        async with self._loading.setdefault(kb_id, asyncio.Lock()):   # one load per knowledge base at a time
            cached = self._indexes.get(kb_id)
            if cached is None or (cached.version, cached.model) != (version, model):
                loaded_version, loaded_model, chunks, vectors = await self._store.searchable(kb_id)
                cached = await asyncio.to_thread(Index.load, loaded_version, loaded_model, chunks, vectors)
                self._indexes[kb_id] = cached
                log.info("knowledge base loaded", extra={"knowledge_base_id": kb_id, "chunks": len(cached),
                                                         "version": loaded_version})
            return cached

    async def indexes(self, kb_ids: Sequence[str]) -> list[tuple[str, Index]]:
        """The current index of each knowledge base that exists (one round trip when none changed)."""
        unique = list(dict.fromkeys(kb_ids))
        found = await self._store.versions(unique)
        out = []
        for kb_id, current in zip(unique, found, strict=True):
            if current is None:
                self._indexes.pop(kb_id, None)
                continue
            out.append((kb_id, await self._index(kb_id, *current)))
        return out

    async def search(self, kb_ids: Sequence[str], query: str, *, top_k: int = DEFAULT_TOP_K,
                     filter_score: float = DEFAULT_FILTER_SCORE) -> list[Hit]:
        """The ``top_k`` chunks of ``kb_ids`` whose score (the module's docstring) is at least ``filter_score``,
        best first. When the embeddings endpoint fails, the keyword side still answers (logged)."""
        started = time.perf_counter()
        indexes = [(kb_id, index) for kb_id, index in await self.indexes(kb_ids) if len(index)]
        query = query.strip()
        if not indexes or not query:
            return []
        vector, outcome = None, "hits"
        if any(index.model == self._embedder.model and index.vectors is not None for _, index in indexes):
            try:
                vector = (await self._embedder.embed([query], quick=True))[0]
            except EmbeddingError as exc:
                log.warning("the question could not be embedded: keyword search only", extra={"error": str(exc)})
                outcome = "keywords_only"
        query_terms = terms(query)
        hits: list[Hit] = []
        for kb_id, index in indexes:
            usable = vector if index.model == self._embedder.model else None
            hits += top(index, rank(index, usable, query_terms), top_k, filter_score, kb_id)
        hits.sort(key=lambda hit: -hit.score)
        self._metrics.knowledge_search_seconds.observe(time.perf_counter() - started)
        self._metrics.knowledge_searches.labels(outcome if hits else "nothing").inc()
        return hits[:top_k]
