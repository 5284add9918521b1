"""Workers: take wake-ups from the ``wakeups`` stream and run conversations' turns (DESIGN.md section 3).

A wake-up names a conversation. The worker that gets its lock waits out the agent's burst window,
runs turns until the mailbox is empty, releases the lock (atomically re-checking the mailbox) and only
then acknowledges the wake-up. A worker that finds the lock taken acknowledges at once: the holder will
see the message. A wake-up whose worker died stays pending and is reclaimed (``XAUTOCLAIM``) after
``reclaim_idle_ms``; the holder keeps its own entry fresh (``XCLAIM`` resets the idle time) while it works.
A *reclaimed* wake-up whose lock is taken stays pending (the holder may be the worker that died) and comes
back once that lock has expired.

At most ``PARLEY_WORKERS`` conversations run at once per process. On shutdown the pool stops reading,
lets running turns finish for ``drain_timeout_s``, then cancels the rest, whose wake-ups stay pending.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import keys
from .clock import now_ms
from .errors import ParleyError
from .keys import Conversation
from .mailbox import Item, Release
from .runtime import Runtime
from .turn import Turns, next_batch

log = logging.getLogger(__name__)

READ_BLOCK_MS = 1_000
MAX_BURST_WINDOW_MS = 60_000   # the largest burst_window_ms an agent may set
MAX_READ = 100


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class WorkerPool:
    """Reads wake-ups and runs conversations, bounded by ``settings.workers``."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._turns = Turns(rt)
        self._name = consumer_name()
        self._active: set[asyncio.Task[None]] = set()
        self._turning: set[str] = set()     # conversations inside a turn right now
        self._stopping = False

    async def ensure_group(self) -> None:
        try:
            await self._rt.redis.xgroup_create(keys.WAKEUPS, keys.WORKER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        """Read and dispatch until cancelled."""
        await self.ensure_group()
        next_reclaim = 0.0
        while True:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # redis-py can swallow a cancel on 3.11
                raise asyncio.CancelledError
            capacity = self._rt.settings.workers - len(self._active)
            if capacity <= 0:
                await asyncio.wait(self._active, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                reclaiming = time.monotonic() >= next_reclaim
                if reclaiming:
                    next_reclaim = time.monotonic() + self._rt.settings.reclaim_idle_ms / 2000
                    entries = await self._reclaim(min(capacity, MAX_READ))
                else:
                    entries = await self._read(min(capacity, MAX_READ))
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.warning("redis unavailable; retrying", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
                continue
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("the wake-up stream is gone (Redis lost its data?); recreating it")
                await self.ensure_group()
                continue
            for entry_id, fields in entries:
                self._spawn(entry_id, Conversation.parse(fields["conv"]), reclaimed=reclaiming)

    async def _read(self, count: int) -> list[tuple[str, dict[str, str]]]:
        reply: Any = await self._rt.redis.xreadgroup(
            keys.WORKER_GROUP, self._name, {keys.WAKEUPS: ">"}, count=count, block=READ_BLOCK_MS
        )
        return [entry for _stream, entries in reply or [] for entry in entries]

    async def _reclaim(self, count: int) -> list[tuple[str, dict[str, str]]]:
        reply: Any = await self._rt.redis.xautoclaim(
            keys.WAKEUPS, keys.WORKER_GROUP, self._name, min_idle_time=self._rt.settings.reclaim_idle_ms,
            start_id="0-0", count=count,
        )
        claimed: list[tuple[str, dict[str, str]]] = reply[1]
        if claimed:
            log.info("reclaimed stale wake-ups", extra={"count": len(claimed)})
        return [entry for entry in claimed if entry and entry[1]]

    def _spawn(self, entry_id: str, conv: Conversation, *, reclaimed: bool) -> None:
        task = asyncio.create_task(self._handle(entry_id, conv, reclaimed), name=f"conv {conv.tag}")
        self._active.add(task)
        task.add_done_callback(self._active.discard)

    async def _handle(self, entry_id: str, conv: Conversation, reclaimed: bool) -> None:
        mailbox = self._rt.mailbox
        token = await mailbox.acquire(conv)
        if token is None and reclaimed:
            # The lock may belong to the worker that died holding this very wake-up: keep it pending; it comes
            # back after reclaim_idle_ms, by when a dead holder's lock (lock_ttl_ms) has expired.
            return
        if token is not None:
            renewer = asyncio.create_task(self._keep_alive(conv, token, entry_id))
            try:
                await self._drain(conv, token)
            except asyncio.CancelledError:
                await self._rt.mailbox.abandon(conv, token)
                raise
            finally:
                renewer.cancel()
        await self._rt.redis.xack(keys.WAKEUPS, keys.WORKER_GROUP, entry_id)

    async def _drain(self, conv: Conversation, token: str) -> None:
        window: int | None = None     # looked up once per drain, and only if a text is that recent
        while True:
            items, window = await self._wait_for_burst(conv, window)
            batch = next_batch(items)
            if batch:
                await self._run_turn(conv, batch)
            # Release if the mailbox is empty (the usual case after a turn); otherwise run the next turn.
            if await self._rt.mailbox.release(conv, token) is not Release.MORE_WORK:
                return

    async def _run_turn(self, conv: Conversation, batch: list[Item]) -> None:
        started = time.perf_counter()
        outcome = "ok"
        self._turning.add(conv.tag)
        try:
            await self._turns.run(conv, batch)
        except (ParleyError, ValueError, KeyError, TypeError) as exc:
            # A turn that cannot be run (bad stored data, a missing agent) must not block the
            # conversation forever: record why, drop the batch, go on with the next one.
            outcome = "failed"
            log.exception("turn failed; dropping its messages", extra={"conv": conv.tag, "error": str(exc)})
            await self._rt.redis.ltrim(keys.mailbox(conv), len(batch), -1)
        finally:
            self._turning.discard(conv.tag)
            self._rt.metrics.turns.labels(batch[0].kind.value, outcome).inc()
            self._rt.metrics.turn_seconds.observe(time.perf_counter() - started)

    async def _wait_for_burst(self, conv: Conversation, window: int | None) -> tuple[list[Item], int | None]:
        """The mailbox, once no new text arrived for the agent's burst window."""
        while True:
            items = await self._rt.mailbox.peek(conv)
            if not items or len(items) >= 20 or now_ms() - items[-1].received_ms >= MAX_BURST_WINDOW_MS:
                return items, window
            if window is None:
                window = await self._burst_window_ms(conv)
            wait_ms = items[-1].received_ms + window - now_ms()
            if wait_ms <= 0:
                return items, window
            await asyncio.sleep(wait_ms / 1000)

    async def _burst_window_ms(self, conv: Conversation) -> int:
        """The burst window of the agent that will answer (the number's first inbound agent for a new chat)."""
        chat = await self._rt.chats.ongoing(conv)
        number = await self._rt.catalog.get_number(conv.agent_number)
        agent_id = chat.agent_id if chat else (number.inbound_sms_agents[0].agent_id
                                               if number and number.inbound_sms_agents else None)
        if agent_id is None:
            return 0
        try:
            return (await self._rt.catalog.agents.get(agent_id, chat.version if chat else None)).burst_window_ms
        except ParleyError:
            return 0

    async def _keep_alive(self, conv: Conversation, token: str, entry_id: str) -> None:
        interval = self._rt.mailbox.locks.ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            if not await self._rt.mailbox.renew(conv, token):
                if conv.tag in self._turning:   # not merely released a moment ago: a turn outlived its lock
                    log.warning("lost the conversation lock mid-turn", extra={"conv": conv.tag})
                return
            await self._rt.redis.xclaim(keys.WAKEUPS, keys.WORKER_GROUP, self._name, 0, [entry_id],
                                        justid=True)

    async def drain(self, timeout_s: float) -> None:
        """Let running conversations finish for ``timeout_s``, then cancel what is left."""
        if self._active:
            _done, pending = await asyncio.wait(set(self._active), timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("cancelled turns at shutdown; their wake-ups will be reclaimed",
                            extra={"count": len(pending)})
                await asyncio.wait(pending, timeout=5)


async def stop_task(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it, re-cancelling: redis-py on Python 3.11 can swallow a cancel."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)

