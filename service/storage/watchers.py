"""Whether anyone watches the console's live views, so that commits PUBLISH to them only then.

The console (``service/console/live.py``) tells every change of a chat to its open pages through one pub/sub
channel, ``keys.LIVE``. Published to with nobody listening, that is still one command per turn: most of a
busy deployment's turns have no console open. So a process with open live views keeps ``keys.LIVE_WATCHED``
set (``watching``: before the view starts, then every ``RENEW_S`` while one is open, expiring ``TTL_S`` after
the last renewal), and every process reads it when it is about to publish and its last read is older than
``REFRESH_S`` (``channel``): at most one read a second per process, however busy, and none while nothing
commits. A process with no console pages of its own so starts publishing within ``REFRESH_S`` of a view
opening anywhere; the console has each new view refresh itself once after that (``Hub.stream``), so what was
committed meanwhile is shown all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.storage import keys
from service.storage.recent import Recent

log = logging.getLogger(__name__)

REFRESH_S = 1.0    # how stale this process's idea of "watched" may get (a page misses at most this much)
RENEW_S = 10.0     # how often a process with open views says so
TTL_S = 30.0       # how long that lasts unrenewed (a process that died with views open)


class Watchers:
    """This process's view of ``keys.LIVE_WATCHED``; one per process (``Runtime.watchers``)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._here = 0                  # open views in this process
        self.read = Recent[bool](int(REFRESH_S * 1000), size=1)   # the last read of the flag
        self._renewal: asyncio.Task[None] | None = None

    async def channel(self) -> str:
        """``keys.LIVE`` while some console views are open, else ``""`` (publish nothing); read again when the
        last read is older than ``REFRESH_S`` (callers meanwhile share that read)."""
        return keys.LIVE if self._here or await self.read.get(keys.LIVE_WATCHED, self._read) else ""

    async def _read(self) -> bool:
        try:
            return bool(await self._redis.exists(keys.LIVE_WATCHED))
        except RedisError as exc:   # publish meanwhile: a lost update matters more than a command
            log.warning("could not read whether console views are open", extra={"error": str(exc)})
            return True

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """For the life of one open view in this process: say so to every process, until this process's last
        open view closes."""
        self._here += 1
        if self._renewal is None or self._renewal.done():
            await self._say()
            self._renewal = asyncio.create_task(self._renew(), name="parley-live-renew")
        try:
            yield
        finally:
            self._here -= 1
            if not self._here and self._renewal is not None:
                self._renewal.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._renewal
                self._renewal = None

    async def _say(self) -> None:
        try:
            await self._redis.set(keys.LIVE_WATCHED, 1, ex=int(TTL_S))
        except RedisError as exc:
            log.warning("could not tell other processes that console views are open", extra={"error": str(exc)})

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            await self._say()
