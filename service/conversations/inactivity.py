"""Background loops: inactivity auto-close, event delivery and post-chat analysis (DESIGN.md section 5).

Each ongoing chat has one member in ``timers:inactivity`` scored by its silence deadline. Any process
may pop due members; popping leases a member (its score moves ``LEASE_MS`` ahead) so that exactly one
process handles it, and a process that dies while holding it gives it back when the lease runs out.
The popper does not close the chat itself: it puts an INACTIVITY item in the conversation's mailbox,
so the close is ordered with the conversation's turns and a text that arrived first wins.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.clock import now_ms
from service.conversations.queue import Item, ItemKind
from service.conversations.runtime import Runtime
from service.storage import keys
from service.storage.dueset import DueSet

log = logging.getLogger(__name__)


async def every(interval_s: float, tick: Callable[[], Awaitable[int]], name: str) -> None:
    """Run ``tick`` every ``interval_s`` until cancelled; right away again when it found work."""
    while True:
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # redis-py can swallow a cancel on 3.11
            raise asyncio.CancelledError
        try:
            if await tick():
                continue
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("redis unavailable; retrying", extra={"loop": name, "error": str(exc)})
        await asyncio.sleep(interval_s)


class Scheduler:
    """Hands due inactivity deadlines to their conversations."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._timers = DueSet(rt.redis, keys.timers)

    async def tick(self) -> int:
        """Hand every due inactivity deadline to its conversation; how many were handed over."""
        due = await self._timers.pop(now_ms())
        for chat_id, deadline, leased in due:
            await self._fire(chat_id, deadline, leased=leased)
        return len(due)

    async def _fire(self, chat_id: str, deadline: int, *, leased: int) -> None:
        chat = await self._rt.chats.get(chat_id)
        conv = chat.conversation if chat else None
        if conv is not None:
            # The item carries the leased score: a worker that finds another score knows a turn re-armed the timer.
            item = Item(ItemKind.INACTIVITY, received_ms=now_ms(), chat_id=chat_id, timer_score=leased)
            await self._rt.mailbox.put(conv, item, dedupe_id=f"inactivity:{chat_id}:{deadline}")
        await self._timers.done(chat_id, leased)
