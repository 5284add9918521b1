"""Workers: take wake-ups from the partitions' ``wakeups`` streams and run conversations' turns (DESIGN.md section 3).

A wake-up names a conversation. The worker that gets its lock waits out the agent's burst window,
runs turns until the mailbox is empty, and the commit that empties it also releases the lock and
acknowledges the wake-up (``mailbox.Lease``). A worker that finds the lock taken acknowledges at once:
the holder will see the message. A wake-up whose worker died stays pending and is reclaimed
(``XAUTOCLAIM``) after ``reclaim_idle_ms``; the holder keeps its own entry fresh (``XCLAIM`` resets the
idle time) while it works. A *reclaimed* wake-up whose lock is taken stays pending (the holder may be the
worker that died) and comes back once that lock has expired.

Reading: one ``XREADGROUP`` over every partition's stream on a single Redis; on Redis Cluster, where a
command may only touch one hash slot, one reader per partition. At most ``PARLEY_WORKERS`` conversations
run at once per process, whatever the number of readers. On shutdown the pool stops reading, lets
running turns finish for ``drain_timeout_s``, then cancels the rest, whose wake-ups stay pending.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import deque
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.clock import now_ms
from service.conversations.queue import Item, Lease, Release
from service.conversations.runtime import Runtime
from service.conversations.turn import Context, Turns, next_batch
from service.errors import ParleyError
from service.storage import keys
from service.storage.keys import Conversation

log = logging.getLogger(__name__)

READ_BLOCK_MS = 1_000
MAX_BURST_WINDOW_MS = 60_000   # the largest burst_window_ms an agent may set
MAX_READ = 100
STREAMS = [keys.wakeups(shard) for shard in range(keys.SHARDS)]


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class WorkerPool:
    """Reads wake-ups and runs conversations, bounded by ``settings.workers``."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._turns = Turns(rt)
        self._name = consumer_name()
        self._active: set[asyncio.Task[None]] = set()
        # Wake-ups read but not started yet: readers read concurrently (one per stream on a cluster), and a read
        # over several streams may return up to its count from each, so a read can bring more than there is room
        # for. At most PARLEY_WORKERS conversations run; the rest wait here, still pending in their streams.
        self._backlog: deque[tuple[str, Conversation, bool]] = deque()
        self._turning: set[str] = set()     # conversations inside a turn right now
        self._room = asyncio.Event()
        self._share = MAX_READ

    async def ensure_groups(self) -> None:
        for stream in STREAMS:
            try:
                await self._rt.redis.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def run(self) -> None:
        """Read and dispatch until cancelled."""
        await self.ensure_groups()
        groups = [[s] for s in STREAMS] if self._rt.settings.redis_cluster else [STREAMS]
        # Each reader (and the reclaimer) asks for at most a fair share of the free slots.
        self._share = max(1, self._rt.settings.workers // (len(groups) + 1))
        readers = [asyncio.create_task(self._read_loop(streams)) for streams in groups]
        readers.append(asyncio.create_task(self._reclaim_loop()))
        try:
            await asyncio.gather(*readers)
        finally:
            for reader in readers:
                await stop_task(reader)

    def _room_left(self) -> int:
        return self._rt.settings.workers - len(self._active) - len(self._backlog)

    async def _wait_for_room(self) -> int:
        while (room := self._room_left()) <= 0:
            self._room.clear()
            await self._room.wait()
        return min(room, self._share, MAX_READ)

    async def _read_loop(self, streams: list[str]) -> None:
        while True:
            await self._poll(streams, reclaim=False)

    async def _reclaim_loop(self) -> None:
        while True:
            for stream in STREAMS:
                await self._poll([stream], reclaim=True)
            await asyncio.sleep(self._rt.settings.reclaim_idle_ms / 2000)

    async def _poll(self, streams: list[str], *, reclaim: bool) -> None:
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # redis-py can swallow a cancel on 3.11
            raise asyncio.CancelledError
        count = await self._wait_for_room()
        try:
            entries = await (self._reclaim(streams[0], count) if reclaim else self._read(streams, count))
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("redis unavailable; retrying", extra={"error": str(exc)})
            await asyncio.sleep(1.0)
            return
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("a wake-up stream is gone (Redis lost its data?); recreating it")
            await self.ensure_groups()
            return
        self._backlog.extend((entry_id, Conversation.parse(fields["conv"]), reclaim) for entry_id, fields in entries)
        self._start()

    async def _read(self, streams: list[str], count: int) -> list[tuple[str, dict[str, str]]]:
        reply: Any = await self._rt.redis.xreadgroup(
            keys.WORKER_GROUP, self._name, {stream: ">" for stream in streams}, count=count, block=READ_BLOCK_MS
        )
        return [entry for _stream, entries in reply or [] for entry in entries]

    async def _reclaim(self, stream: str, count: int) -> list[tuple[str, dict[str, str]]]:
        reply: Any = await self._rt.redis.xautoclaim(
            stream, keys.WORKER_GROUP, self._name, min_idle_time=self._rt.settings.reclaim_idle_ms,
            start_id="0-0", count=count,
        )
        claimed: list[tuple[str, dict[str, str]]] = reply[1]
        if claimed:
            log.info("reclaimed stale wake-ups", extra={"count": len(claimed)})
        return [entry for entry in claimed if entry and entry[1]]

    def _start(self) -> None:
        """Start backlogged wake-ups while fewer than ``settings.workers`` conversations run."""
        while self._backlog and len(self._active) < self._rt.settings.workers:
            entry_id, conv, reclaimed = self._backlog.popleft()
            task = asyncio.create_task(self._handle(entry_id, conv, reclaimed), name=f"conv {conv.id}")
            self._active.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._active.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Its wake-up stays pending and is reclaimed after reclaim_idle_ms.
            log.error("conversation task failed", exc_info=exc, extra={"task": task.get_name()})
        self._start()
        self._room.set()

    async def _handle(self, entry_id: str, conv: Conversation, reclaimed: bool) -> None:
        token = secrets.token_hex(16)
        first = await self._turns.take(conv, token)   # the lock, and what the first turn needs
        if first is None and reclaimed:
            # The lock may belong to the worker that died holding this very wake-up: keep it pending; it comes
            # back after reclaim_idle_ms, by when a dead holder's lock (lock_ttl_ms) has expired.
            return
        if first is None:   # the holder will see the message
            await self._rt.redis.xack(keys.wakeups(conv.shard), keys.WORKER_GROUP, entry_id)
            return
        lease = Lease(conv, token, entry_id)
        renewer = asyncio.create_task(self._keep_alive(lease))
        try:
            await self._drain(lease, first)
        except asyncio.CancelledError:
            await self._rt.mailbox.abandon(conv, token)
            raise
        finally:
            renewer.cancel()
        if lease.outcome is Release.LOST:   # the lock expired under us: this wake-up is answered anyway
            await self._rt.redis.xack(keys.wakeups(conv.shard), keys.WORKER_GROUP, entry_id)

    async def _drain(self, lease: Lease, loaded: tuple[list[Item], Context] | None) -> None:
        """Run turns until a commit (or a release) finds the mailbox empty and lets go of the conversation."""
        while True:
            lease.outcome = None
            items, ctx = await self._wait_for_burst(lease.conv, loaded)
            loaded = None
            batch = next_batch(items)
            if batch:
                await self._run_turn(lease, batch, ctx)
            if lease.outcome is None:   # nothing was committed under the lease: release it here
                lease.outcome = await self._rt.mailbox.release(lease)
            if lease.outcome is not Release.MORE_WORK:
                return

    async def _run_turn(self, lease: Lease, batch: list[Item], ctx: Context) -> None:
        conv = lease.conv
        started = time.perf_counter()
        outcome = "ok"
        self._turning.add(conv.id)
        try:
            await self._turns.run(lease, batch, ctx)
        except (ParleyError, ValueError, KeyError, TypeError) as exc:
            # A turn that cannot be run (bad stored data, a missing agent) must not block the
            # conversation forever: record why, drop the batch, go on with the next one.
            outcome = "failed"
            log.exception("turn failed; dropping its messages", extra={"conv": conv.id, "error": str(exc)})
            await self._rt.redis.ltrim(keys.mailbox(conv), len(batch), -1)
            lease.outcome = None
        finally:
            self._turning.discard(conv.id)
            self._rt.metrics.turns.labels(batch[0].kind.value, outcome).inc()
            self._rt.metrics.turn_seconds.observe(time.perf_counter() - started)

    async def _wait_for_burst(
        self, conv: Conversation, loaded: tuple[list[Item], Context] | None,
    ) -> tuple[list[Item], Context]:
        """The mailbox and its turn's context (``loaded`` if just read), once no new text arrived for the
        agent's burst window."""
        while True:
            items, ctx = loaded or await self._turns.load(conv)
            loaded = None
            if not items or len(items) >= 20 or now_ms() - items[-1].received_ms >= MAX_BURST_WINDOW_MS:
                return items, ctx
            wait_ms = items[-1].received_ms + await self._turns.burst_window_ms(ctx) - now_ms()
            if wait_ms <= 0:
                return items, ctx
            await asyncio.sleep(wait_ms / 1000)   # then read both again: the chat may have changed meanwhile

    async def _keep_alive(self, lease: Lease) -> None:
        conv = lease.conv
        interval = self._rt.mailbox.locks.ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            if not await self._rt.mailbox.renew(conv, lease.token):
                if conv.id in self._turning:   # not merely released a moment ago: a turn outlived its lock
                    log.warning("lost the conversation lock mid-turn", extra={"conv": conv.id})
                return
            await self._rt.redis.xclaim(keys.wakeups(conv.shard), keys.WORKER_GROUP, self._name, 0,
                                        [lease.entry_id], justid=True)

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

