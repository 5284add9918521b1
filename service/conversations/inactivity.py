"""Inactivity auto-close: a chat silent for its agent's ``end_chat_after_silence_ms`` is closed.

Each ongoing chat has one member in its partition's ``timers`` set, scored by its silence deadline. Any
process may pop due members; popping leases a member (``storage.dueset``: its score moves the lease ahead)
so that exactly one process handles it, and a process that dies while holding it gives it back when the
lease runs out.
The popper does not close the chat itself: it puts an INACTIVITY item in the conversation's mailbox,
so the close is ordered with the conversation's turns and a text that arrived first wins.
"""

from __future__ import annotations

import logging

from service.clock import now_ms
from service.conversations.items import Item, ItemKind
from service.conversations.runtime import Runtime
from service.storage import keys
from service.storage.dueset import DueSet

log = logging.getLogger(__name__)


class Inactivity:
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
            await self._rt.queue.put(conv, item, dedupe_id=f"inactivity:{chat_id}:{deadline}")
        await self._timers.done(chat_id, leased)
