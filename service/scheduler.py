"""Timers: inactivity auto-close (DESIGN.md section 5).

Each ongoing chat has one member in ``timers:inactivity`` scored by its silence deadline. Any process
may pop due members; popping leases a member (its score moves ``LEASE_MS`` ahead) so that exactly one
process handles it, and a process that dies while holding it gives it back when the lease runs out.
The popper does not close the chat itself: it puts an INACTIVITY item in the conversation's mailbox,
so the close is ordered with the conversation's turns and a text that arrived first wins.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import keys
from .mailbox import Item, ItemKind, now_ms
from .runtime import Runtime

log = logging.getLogger(__name__)

LEASE_MS = 60_000
BATCH = 100

# KEYS: timers.  ARGV: now ms, lease ms, batch.  Returns [member, deadline, ...] for due members, leased.
_POP_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
for i = 1, #due, 2 do redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), due[i]) end
return due
"""

# KEYS: timers.  ARGV: member, leased score.  Remove the member only if no turn re-armed it meanwhile.
_DONE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""


class Scheduler:
    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._pop = rt.redis.register_script(_POP_DUE)
        self._done = rt.redis.register_script(_DONE)

    async def run(self) -> None:
        interval = self._rt.settings.scheduler_interval_ms / 1000
        while True:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            try:
                await self.tick()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.warning("redis unavailable; scheduler retrying", extra={"error": str(exc)})
            await asyncio.sleep(interval)

    async def tick(self) -> int:
        """Hand every due inactivity deadline to its conversation; how many were handed over."""
        now = now_ms()
        due = await self._pop(keys=[keys.INACTIVITY_TIMERS], args=[now, LEASE_MS, BATCH])
        for chat_id, deadline in zip(due[::2], due[1::2], strict=True):
            await self._fire(chat_id, int(float(deadline)), leased=now + LEASE_MS)
        return len(due) // 2

    async def _fire(self, chat_id: str, deadline: int, *, leased: int) -> None:
        chat = await self._rt.chats.get(chat_id)
        conv = chat.conversation if chat else None
        if conv is not None:
            # The item carries the leased score: a worker that finds another score knows a turn re-armed the timer.
            item = Item(ItemKind.INACTIVITY, received_ms=now_ms(), chat_id=chat_id, timer_score=leased)
            await self._rt.mailbox.put(conv, item, dedupe_id=f"inactivity:{chat_id}:{deadline}", check_optout=False)
        await self._done(keys=[keys.INACTIVITY_TIMERS], args=[chat_id, leased])
