"""Embeddings from any OpenAI-compatible ``/v1/embeddings`` endpoint, through the official ``openai`` client (as
``agent.llm`` calls the chat model).

The server, key and model are settings (``PARLEY_EMBEDDING_*``); the server and key default to the chat LLM's
(``OPENAI_BASE_URL``, ``OPENAI_API_KEY``). Texts go in batches of ``PARLEY_EMBEDDING_BATCH``; the client retries
408/409/429/5xx, time-outs and connection errors itself (``PARLEY_LLM_MAX_RETRIES``) within
``PARLEY_EMBEDDING_TIMEOUT_S`` per attempt, and what still fails is an ``EmbeddingError``. Vectors come back
as float32 rows of unit length, so a dot product is the cosine similarity.

The model's name is stored with every knowledge base's vectors (``knowledge.store``): vectors of two models are
never compared, and a change of ``PARLEY_EMBEDDING_MODEL`` (or of its dimensions, part of the name kept) makes
ingestion re-embed the stored chunks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import openai
from openai import AsyncOpenAI, DefaultAioHttpClient

from service.errors import EmbeddingError
from service.metrics import Metrics
from service.settings import Settings

Matrix = npt.NDArray[np.float32]


def normalised(rows: Matrix) -> Matrix:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: Matrix = (rows / norms).astype(np.float32, copy=False)
    return out


class Embedder:
    """Texts to unit vectors."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._metrics = metrics
        self.dimensions = settings.embedding_dimensions
        # What is stored with a knowledge base's vectors: the model, and the dimensions asked of it.
        self.model = settings.embedding_model + (f"@{self.dimensions}" if self.dimensions else "")
        self._served = settings.embedding_model
        self.batch = settings.embedding_batch
        self._query_timeout_s = settings.embedding_query_timeout_s
        key = settings.embedding_api_key or settings.openai_api_key
        self._client: AsyncOpenAI | None = None
        if key is not None and key.get_secret_value():
            self._client = AsyncOpenAI(
                api_key=key.get_secret_value(), base_url=settings.embedding_base_url or settings.openai_base_url,
                timeout=settings.embedding_timeout_s, max_retries=settings.llm_max_retries,
                http_client=DefaultAioHttpClient())

    @property
    def configured(self) -> bool:
        return self._client is not None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def embed(self, texts: list[str], *, quick: bool = False) -> Matrix:
        """One unit row per text, in order. ``quick``: a turn's question, which waits at most
        ``PARLEY_EMBEDDING_QUERY_TIMEOUT_S`` and is not retried (the search falls back to keywords instead of
        holding the reply)."""
        if self._client is None:
            raise EmbeddingError("no key for the embeddings endpoint: set PARLEY_EMBEDDING_API_KEY or OPENAI_API_KEY")
        client = self._client.with_options(timeout=self._query_timeout_s, max_retries=0) if quick else self._client
        rows: list[Matrix] = []
        for start in range(0, len(texts), self.batch):
            rows.append(await self._batch(client, texts[start:start + self.batch]))
        if not rows:
            return np.zeros((0, self.dimensions or 0), dtype=np.float32)
        return normalised(np.vstack(rows))

    async def _batch(self, client: AsyncOpenAI, texts: list[str]) -> Matrix:
        kwargs: dict[str, Any] = {"model": self._served, "input": texts, "encoding_format": "float"}
        if self.dimensions:
            kwargs["dimensions"] = self.dimensions
        try:
            answer = await client.embeddings.create(**kwargs)
        except openai.APIError as exc:
            self._metrics.embedding_calls.labels(exc.__class__.__name__).inc()
            raise EmbeddingError(f"the embeddings endpoint failed: {exc.__class__.__name__}: {exc}") from exc
        self._metrics.embedding_calls.labels("ok").inc()
        data = sorted(answer.data, key=lambda item: item.index)
        if len(data) != len(texts) or len({len(item.embedding) for item in data}) != 1:
            raise EmbeddingError(f"the embeddings endpoint answered {len(data)} vectors of sizes "
                                 f"{sorted({len(item.embedding) for item in data})} for {len(texts)} texts")
        return np.asarray([item.embedding for item in data], dtype=np.float32)
