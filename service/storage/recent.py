"""Values read in the last few moments, by key, with callers that miss at once sharing one read: the catalog's
agents and numbers (``catalog.store``), whether console views are open (``storage.watchers``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Recent(Generic[T]):
    """Values read in the last ``ttl_ms``, by key (at most ``size``; 0 ms keeps nothing). Callers that miss
    at the same time share one read."""

    def __init__(self, ttl_ms: int, size: int = 4096) -> None:
        self._ttl_s = ttl_ms / 1000
        self._size = size
        self._items: dict[str, tuple[float, asyncio.Future[T]]] = {}

    async def get(self, key: str, load: Callable[[], Awaitable[T]]) -> T:
        if self._ttl_s <= 0:
            return await load()
        now = time.monotonic()
        hit = self._items.get(key)
        if hit is not None and hit[0] > now and not _failed(hit[1]):
            return hit[1].result() if hit[1].done() else await asyncio.shield(hit[1])
        if len(self._items) >= self._size:
            self._items.clear()
        future = asyncio.ensure_future(load())
        self._items[key] = (now + self._ttl_s, future)
        try:
            return await asyncio.shield(future)
        except BaseException:
            if self._items.get(key, (0.0, None))[1] is future:
                del self._items[key]   # a failed read is not kept
            raise

    def clear(self) -> None:
        self._items.clear()


def _failed(future: asyncio.Future[Any]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)
