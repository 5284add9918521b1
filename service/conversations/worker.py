"""Workers: take wake-ups from the conversation queue and run conversations' turns.

A wake-up names a conversation. The worker that gets its lock waits out the agent's burst window, runs
turns until the mailbox is empty, and the commit that empties it also releases the lock and acknowledges
the wake-up. A worker that finds the lock taken acknowledges at once: the holder will see the message. A
wake-up whose worker died stays pending and is reclaimed after ``reclaim_idle_ms``; the holder keeps its
lock and its entry fresh while it works (one loop per pool renews every held lock). A *reclaimed* wake-up
whose lock is taken stays pending (the holder may be the worker that died) and comes back once that lock has
expired. ``conversations.queue`` holds the Redis side of all this and its invariants; this module decides what
runs when.

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

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.address import Conversation
from service.clock import now_ms
from service.conversations.items import MAX_TEXTS_PER_TURN, Item, next_batch
from service.conversations.queue import Wakeup
from service.conversations.runtime import Runtime
from service.conversations.turn import Context, Turns
from service.errors import ParleyError
from service.storage.locks import Hold, Release
from service.tasks import stop_task

log = logging.getLogger(__name__)

READ_BLOCK_MS = 1_000
MAX_READ = 100
TURN_ATTEMPTS = 3              # a turn that raises is run this many times before its texts get the fallback
TURN_RETRY_S = 0.5             # after the n-th failure, wait n times this
# What a turn may raise that running it again (or answering with the fallback) can get past; anything else
# (Redis unreachable, a bug) leaves the wake-up pending, to be reclaimed and run again.
TURN_FAILURES = (ParleyError, ValueError, KeyError, TypeError)
OUTAGE_RETRY_S = 0.25          # how often a turn cut off by a Redis outage tries to give its lock back
# A read's errors that mean its stream (or group) went away: NOGROUP, or UNBLOCKED when the stream was deleted
# under a blocked XREADGROUP (Redis 7; also CLIENT UNBLOCK ... ERROR). The groups are made again and reading goes on.
STREAM_GONE = ("NOGROUP", "UNBLOCKED")


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class WorkerPool:
    """Reads wake-ups and runs conversations, bounded by ``settings.workers``."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._queue = rt.queue
        self._turns = Turns(rt)
        self._name = consumer_name()
        self._active: set[asyncio.Task[None]] = set()
        # Wake-ups read but not started yet: readers read concurrently (one per stream on a cluster), and a read
        # over several streams may return up to its count from each, so a read can bring more than there is room
        # for. At most PARLEY_WORKERS conversations run; the rest wait here, still pending in their streams.
        self._backlog: deque[Wakeup] = deque()
        self._turning: set[str] = set()     # conversations inside a turn right now
        self._room = asyncio.Event()
        self._share = MAX_READ  # pragma: no mutate (run() sets it before any read)
        # The conversations held, and when each lock was last taken or renewed (``time.monotonic``): one loop
        # renews them all (``_renew_loop``), rather than a timer per turn. It runs until ``drain`` is done.
        self._holds: dict[Hold, float] = {}
        self._renewer: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Read and dispatch until cancelled."""
        await self._queue.ensure_groups()
        streams = self._queue.streams
        groups = [[s] for s in streams] if self._rt.settings.redis_cluster else [streams]
        # Each reader (and the reclaimer) asks for at most a fair share of the free slots.
        self._share = max(1, self._rt.settings.workers // (len(groups) + 1))
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_loop(), name="parley-lock-renewal")
        readers = [asyncio.create_task(self._read_loop(group)) for group in groups]
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
            await self._poll(streams, reclaim=False)  # pragma: no mutate (reclaim=None reads as False)

    async def _reclaim_loop(self) -> None:
        while True:
            for stream in self._queue.streams:
                await self._poll([stream], reclaim=True)
            await asyncio.sleep(self._rt.settings.reclaim_idle_ms / 2000)

    async def _poll(self, streams: list[str], *, reclaim: bool) -> None:
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # redis-py can swallow a cancel on 3.11
            raise asyncio.CancelledError
        count = await self._wait_for_room()
        try:
            if reclaim:
                wakeups = await self._queue.reclaim(self._name, streams[0], count,
                                                    min_idle_ms=self._rt.settings.reclaim_idle_ms)
            else:
                wakeups = await self._queue.read(self._name, streams, count, block_ms=READ_BLOCK_MS)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("redis unavailable; retrying", extra={"error": str(exc)})
            await asyncio.sleep(1.0)
            return
        except ResponseError as exc:
            if not str(exc).startswith(STREAM_GONE):
                raise
            log.warning("a wake-up stream is gone (Redis lost its data?); recreating it", extra={"error": str(exc)})
            await self._queue.ensure_groups()
            return
        self._backlog.extend(wakeups)
        self._start()

    def _start(self) -> None:
        """Start backlogged wake-ups while fewer than ``settings.workers`` conversations run."""
        while self._backlog and len(self._active) < self._rt.settings.workers:
            wakeup = self._backlog.popleft()
            task = asyncio.create_task(self._handle(wakeup), name=f"conv {wakeup.conv.id}")
            self._active.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._active.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Its wake-up stays pending and is reclaimed after reclaim_idle_ms.
            log.error("conversation task failed", exc_info=exc, extra={"task": task.get_name()})
        self._start()
        self._room.set()

    async def _handle(self, wakeup: Wakeup) -> None:
        conv = wakeup.conv
        token = self._queue.new_token()
        first = await self._turns.take(conv, token)   # the lock, and what the first turn needs
        if first is None and wakeup.reclaimed:
            # The lock may belong to the worker that died holding this very wake-up: keep it pending; it comes
            # back after reclaim_idle_ms, by when a dead holder's lock (lock_ttl_ms) has expired.
            return
        if first is None:   # the holder will see the message
            await self._queue.ack(conv, wakeup.entry_id)
            return
        hold = Hold(conv, token, wakeup.entry_id)
        self._holds[hold] = time.monotonic()
        try:
            try:
                outcome = await self._drain(hold, first)
            finally:
                self._holds.pop(hold, None)   # renewed no more, however the turns ended (a lost lock is gone already)
        except asyncio.CancelledError:
            await self._queue.abandon(hold)
            raise
        except (RedisConnectionError, RedisTimeoutError):
            await self._give_back_after_outage(hold)
            raise
        if outcome is Release.LOST:   # the lock expired under us: this wake-up is answered anyway
            await self._queue.ack(conv, wakeup.entry_id)

    async def _give_back_after_outage(self, hold: Hold) -> None:
        """Redis went away mid-turn: give the lock back as soon as Redis is back (within the lock's TTL), so the
        pending wake-up is reclaimed and the turn run again in a second or two rather than after lock_ttl_ms."""
        deadline = time.monotonic() + self._queue.lock_ttl_ms / 1000
        while time.monotonic() < deadline:  # pragma: no mutate (<= differs for one instant of the clock)
            try:
                await self._queue.abandon(hold)
                return
            except (RedisConnectionError, RedisTimeoutError):
                await asyncio.sleep(OUTAGE_RETRY_S)

    async def _drain(self, hold: Hold, loaded: tuple[list[Item], Context] | None) -> Release:
        """Run turns until a commit (or a release) finds the mailbox empty and lets go of the conversation."""
        while True:
            items, ctx = await self._wait_for_burst(hold.conv, loaded)
            loaded = None  # pragma: no mutate (loaded = "" is as falsy)
            batch = next_batch(items)
            outcome = await self._run_turn(hold, batch, ctx) if batch else None
            if outcome is None:   # an empty mailbox: release the hold here
                outcome = await self._queue.release(hold)
            if outcome is not Release.MORE_WORK:
                return outcome

    async def _run_turn(self, hold: Hold, batch: list[Item], ctx: Context) -> Release:
        """Run one turn; what its commit did with the lock. A turn that raises (bad stored data, a missing
        agent or LLM version) is tried ``TURN_ATTEMPTS`` times, then its texts are answered with the agent's
        fallback message (``Turns.fallback``): a text is never dropped unanswered, and the conversation is not
        blocked."""
        conv = hold.conv
        started = time.perf_counter()
        outcome = "ok"
        self._turning.add(conv.id)
        try:
            for attempt in range(1, TURN_ATTEMPTS + 1):
                try:
                    return await self._turns.run(hold, batch, ctx)
                except TURN_FAILURES as exc:
                    log.exception("turn failed", extra={"conv": conv.id, "attempt": attempt, "error": str(exc)})
                if attempt < TURN_ATTEMPTS:
                    await asyncio.sleep(TURN_RETRY_S * attempt)
                    items, ctx = await self._turns.load(conv)   # read again: what failed may have been fixed
                    batch = next_batch(items) or batch
            outcome = "fallback"
            return await self._turns.fallback(hold, batch, ctx)
        finally:
            self._turning.discard(conv.id)
            self._rt.metrics.turns.labels(batch[0].kind.value, outcome).inc()
            self._rt.metrics.turn_seconds.observe(time.perf_counter() - started)

    async def _wait_for_burst(
        self, conv: Conversation, loaded: tuple[list[Item], Context] | None,
    ) -> tuple[list[Item], Context]:
        """The mailbox and its turn's context (``loaded`` if just read), once no new text arrived for the
        agent's burst window (at most 60 s: ``ChatAgent.burst_window_ms``), or at once for a full batch."""
        while True:
            items, ctx = loaded or await self._turns.load(conv)
            loaded = None  # pragma: no mutate (loaded = "" is as falsy)
            if not items or len(items) >= MAX_TEXTS_PER_TURN:
                return items, ctx
            wait_ms = items[-1].received_ms + await self._turns.burst_window_ms(ctx) - now_ms()
            if wait_ms <= 0:
                return items, ctx
            await asyncio.sleep(wait_ms / 1000)   # then read both again: the chat may have changed meanwhile

    async def _renew_loop(self) -> None:
        """Renew the held locks every third of their TTL: every sixth of it, those at least a quarter of it old, all
        at once (a timer firing a little early or late changes nothing; a new hold waits at most 5/12 of the TTL)."""
        ttl_s = self._queue.lock_ttl_ms / 1000
        while True:
            await asyncio.sleep(ttl_s / 6)
            due = time.monotonic() - ttl_s / 4
            stale = [hold for hold, renewed in self._holds.items() if renewed <= due]
            if stale:
                await asyncio.gather(*(self._renew(hold) for hold in stale))

    async def _renew(self, hold: Hold) -> None:
        renewed = time.monotonic()
        try:
            kept = await self._queue.keep(hold, self._name)
        except (RedisConnectionError, RedisTimeoutError) as exc:   # tried again at the next round
            log.warning("redis unavailable; retrying", extra={"conv": hold.conv.id, "error": str(exc)})
            return
        if hold not in self._holds:   # released meanwhile
            return
        if kept:
            self._holds[hold] = renewed
            return
        del self._holds[hold]
        if hold.conv.id in self._turning:   # not merely released a moment ago: a turn outlived its lock
            log.warning("lost the conversation lock mid-turn", extra={"conv": hold.conv.id})

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
        if self._renewer is not None:
            await stop_task(self._renewer)
            self._renewer = None


