"""The console's live views: server-sent events fed from Redis, so they see turns any process committed.

While some live view is open, in any process (``storage.watchers``: this process at once, the others within
about a second), the commit script PUBLISHes the chat id of every turn that wrote messages or ended a chat to
``keys.LIVE``; so do a status callback that moved a message's status and an update of the chat (``Chats.update``:
a pause, from the API or here). With no view open nothing is published: no command per turn for nobody. Each
process that serves console pages holds one subscription (``Hub``, started by the first ``GET /console/live``
and stopped with the app), and fans each message out to its open event streams.
A page's script (``static/console.js``) refreshes the parts the chat id concerns; without JavaScript the pages
are whole and a reload shows the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from service.app_state import REDIS, RUNTIME
from service.storage import keys
from service.storage.watchers import REFRESH_S, Watchers

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0   # a comment line this often keeps proxies from closing an idle stream
QUEUE_SIZE = 256     # a stream that falls this far behind is told to reload instead
RECONNECT_S = 1.0


class Hub:
    """One Redis subscription, fanned out to this process's event streams."""

    def __init__(self, redis: aioredis.Redis, watchers: Watchers) -> None:
        self._redis = redis
        self._watchers = watchers
        self._streams: set[asyncio.Queue[str]] = set()
        self._task: asyncio.Task[None] | None = None

    def _ensure(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen(), name="parley-console-live")

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub()
                async with pubsub:
                    await pubsub.subscribe(keys.LIVE)
                    self._fan("reload")   # what was published while not subscribed: have pages refresh
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._fan(str(message["data"]))
            except RedisError as exc:
                log.warning("console live feed lost its subscription; retrying", extra={"error": str(exc)})
                await asyncio.sleep(RECONNECT_S)

    def _fan(self, chat_id: str) -> None:
        for queue in list(self._streams):
            try:
                queue.put_nowait(chat_id)
            except asyncio.QueueFull:
                queue.get_nowait()   # the oldest goes; the page reloads whole
                queue.put_nowait("reload")

    @contextlib.asynccontextmanager
    async def stream(self) -> AsyncIterator[asyncio.Queue[str]]:
        queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_SIZE)
        # What changed between the page's rendering and this stream's joining is not lost: the page first
        # refreshes its live parts once.
        queue.put_nowait("reload")
        self._streams.add(queue)
        self._ensure()
        try:
            async with self._watchers.watching():
                # Other processes learn that a view is open within REFRESH_S: what they committed meanwhile is
                # shown by one more refresh, after that.
                late = asyncio.get_running_loop().call_later(REFRESH_S + 0.5, self._late_reload, queue)
                try:
                    yield queue
                finally:
                    late.cancel()
        finally:
            self._streams.discard(queue)

    @staticmethod
    def _late_reload(queue: asyncio.Queue[str]) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait("reload")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


HUB = web.AppKey("console_hub", Hub)


async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
    app[HUB] = Hub(app[REDIS], app[RUNTIME].watchers)
    yield
    await app[HUB].close()


async def events(request: web.Request) -> web.StreamResponse:
    """``GET /console/live``: ``text/event-stream``, one ``data: <chat id>`` per change."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    await response.write(b"retry: 2000\n\n")
    async with request.app[HUB].stream() as queue:
        while True:
            try:
                chat_id = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            await response.write(f"data: {chat_id}\n\n".encode())
