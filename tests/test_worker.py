"""The worker pool (``service/conversations/worker.py``) driven directly on a real Redis, with the fake Twilio and
an OpenAI fake whose answers a test can hold back: the burst window, the lock's renewal, failing turns, the
concurrency bound, reclaimed wake-ups, Redis outages and shutdown.

Each test builds Parley without its workers (``run_workers=False``) and runs a ``WorkerPool`` of its own on the
app's ``Runtime``, so it can stop and drain it. Only the clock is faked, and only where a test says so."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.address import Conversation
from service.app_state import RUNTIME
from service.clock import now_ms
from service.conversations import worker
from service.conversations.items import Item, ItemKind
from service.conversations.runtime import Runtime
from service.conversations.worker import WorkerPool, consumer_name
from service.storage import keys
from service.tasks import stop_task

from .conftest import AGENT_NUMBER, USER, MakeParley, Parley, agent_file, is_cluster
from .fakes.openai import FakeOpenAI
from .redis_proxy import Proxy

CONV = Conversation(AGENT_NUMBER, USER)
FALLBACK = "Sorry, we are having trouble; a person will text you back."


@dataclass
class HeldOpenAI(FakeOpenAI):
    """The fake OpenAI, with a gate: while ``gate`` is clear, requests wait at the door (``waiting``)."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    arrivals: int = 0                 # requests that reached the door
    waiting: int = 0
    most_waiting: int = 0
    moved: asyncio.Event = field(default_factory=asyncio.Event)      # a request arrived or was answered
    answered: int = 0

    def __post_init__(self) -> None:
        self.gate.set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._held)
        return app

    async def _held(self, request: web.Request) -> web.StreamResponse:
        self.arrivals += 1
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        self.moved.set()
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        response = await self._complete(request)
        self.answered += 1
        self.moved.set()
        return response

    async def wait_for(self, what: Callable[[], bool], within_s: float = 10.0) -> None:
        async with asyncio.timeout(within_s):
            while not what():
                self.moved.clear()
                await self.moved.wait()


@pytest.fixture
async def fake_llm() -> AsyncIterator[HeldOpenAI]:
    fake = HeldOpenAI()
    async with TestServer(fake.app()) as server:
        fake.url = str(server.make_url("/v1"))
        yield fake
        fake.gate.set()


StartPool = Callable[[Runtime], Awaitable[tuple[WorkerPool, "asyncio.Task[None]"]]]


@pytest.fixture
async def start_pool() -> AsyncIterator[StartPool]:
    """Run a ``WorkerPool`` on a runtime; stopped (and drained at once) when the test ends."""
    started: list[tuple[WorkerPool, asyncio.Task[None]]] = []

    async def start(rt: Runtime) -> tuple[WorkerPool, asyncio.Task[None]]:
        pool = WorkerPool(rt)
        task = asyncio.create_task(pool.run())
        started.append((pool, task))
        return pool, task

    yield start
    for pool, task in started:
        await stop_task(task)
        await pool.drain(0)


async def build(make_parley: MakeParley, **settings: Any) -> tuple[Parley, Runtime]:
    parley = await make_parley(run_workers=False, **settings)
    rt = parley.client.app[RUNTIME]
    await rt.queue.ensure_groups()
    return parley, rt


async def until(check: Callable[[], Awaitable[bool]], within_s: float = 10.0, what: str = "") -> None:
    """Wait (bounded) until ``check()`` is true, polling Redis state."""
    try:
        async with asyncio.timeout(within_s):
            while not await check():  # noqa: ASYNC110 (state in Redis: nothing to wait on but a poll)
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {within_s} s: {what or check}") from None


async def put(rt: Runtime, body: str, *, received_ms: int | None = None, conv: Conversation = CONV) -> None:
    item = Item(ItemKind.TEXT, received_ms=now_ms() if received_ms is None else received_ms, body=body,
                message_sid=f"SM{body}")
    await rt.queue.put(conv, item, dedupe_id=f"SM{conv.user_number}{body}")


async def pending(redis: aioredis.Redis, conv: Conversation = CONV) -> int:
    return int((await redis.xpending(keys.wakeups(conv.shard), keys.WORKER_GROUP))["pending"])


async def delivered(redis: aioredis.Redis, conv: Conversation = CONV) -> list[dict[str, Any]]:
    """The conversation's partition's pending wake-ups: consumer and times delivered of each."""
    return list(await redis.xpending_range(keys.wakeups(conv.shard), keys.WORKER_GROUP, "-", "+", 100))


async def acknowledged(redis: aioredis.Redis, entry_id: str, conv: Conversation = CONV) -> bool:
    """The wake-up ``entry_id`` was read by a worker, and nothing of the partition is pending."""
    groups = await redis.xinfo_groups(keys.wakeups(conv.shard))
    return bool(groups) and groups[0]["last-delivered-id"] == entry_id and await pending(redis, conv) == 0


async def mailbox(redis: aioredis.Redis, conv: Conversation = CONV) -> list[str]:
    return [Item.from_json(str(raw)).body for raw in await redis.lrange(keys.mailbox(conv), 0, -1)]


def held(parley: Parley) -> HeldOpenAI:
    """The fake OpenAI of this module (the ``fake_llm`` fixture below)."""
    assert isinstance(parley.llm, HeldOpenAI)
    return parley.llm


def user_texts(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


def records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


def users_in_distinct_partitions(count: int) -> list[str]:
    users: dict[int, str] = {}
    n = 0
    while len(users) < count:
        user = f"+1415555{n:04d}"
        users.setdefault(Conversation(AGENT_NUMBER, user).shard, user)
        n += 1
    return list(users.values())


def users_in_one_partition(count: int) -> list[str]:
    by_partition: dict[int, list[str]] = {}
    n = 0
    while True:
        user = f"+1415556{n:04d}"
        found = by_partition.setdefault(Conversation(AGENT_NUMBER, user).shard, [])
        found.append(user)
        if len(found) == count:
            return found
        n += 1


def test_consumer_names_say_which_process_and_differ() -> None:
    name = consumer_name()
    assert re.fullmatch(rf"{re.escape(socket.gethostname())}-{os.getpid()}-[0-9a-f]{{6}}", name), name
    assert consumer_name() != name


# The burst window.


class Clock:
    """The worker's clock (``worker.now_ms``), moved by the test; counts how often the worker reads it."""

    def __init__(self, ms: int) -> None:
        self.ms = ms
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.ms

    async def looked_again(self, times: int = 4, within_s: float = 5.0) -> None:
        """Wait until the worker read the clock ``times`` more times: it went round its waiting loop at least
        once with the clock as it is now, and chose to wait on."""
        target = self.reads + times
        async with asyncio.timeout(within_s):
            while self.reads < target:  # noqa: ASYNC110
                await asyncio.sleep(0.005)


async def test_a_burst_of_four_texts_is_one_turn_and_each_text_restarts_the_window(
    make_parley: MakeParley, start_pool: StartPool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    parley, rt = await build(make_parley, agent=agent_file(burst_window_ms=1_000))
    base = now_ms()
    clock = Clock(base + 950)
    monkeypatch.setattr(worker, "now_ms", clock)
    await start_pool(rt)
    await put(rt, "one", received_ms=base)                 # its window ends at base + 1000
    await until(lambda: _exists(parley.redis, keys.lock(CONV)), what="the worker took the conversation")
    await clock.looked_again()
    for body, at in (("two", 950), ("three", 1_900), ("four", 2_850)):
        await put(rt, body, received_ms=base + at)
        clock.ms = base + at + 950                            # the window of every earlier text is over
        await clock.looked_again()
        assert held(parley).arrivals == 0, f"answered before the window after {body!r} closed"
    clock.ms = base + 2_850 + 999                              # a millisecond before the last text's window ends
    await clock.looked_again()
    assert held(parley).arrivals == 0
    clock.ms = base + 2_850 + 1_000
    [sent] = await parley.twilio.wait_for(1)
    assert sent.body == "You said: four"
    assert [user_texts(r) for r in held(parley).requests] == [["one", "two", "three", "four"]]
    await parley.idle()
    assert len(parley.twilio.messages) == 1


async def test_a_text_a_minute_old_is_answered_without_waiting_longer(
    make_parley: MakeParley, start_pool: StartPool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    parley, rt = await build(make_parley, agent=agent_file(burst_window_ms=60_000))
    base = now_ms()
    clock = Clock(base + 59_999)
    monkeypatch.setattr(worker, "now_ms", clock)
    await start_pool(rt)
    await put(rt, "late", received_ms=base)
    await until(lambda: _exists(parley.redis, keys.lock(CONV)), what="the worker took the conversation")
    await clock.looked_again()
    assert held(parley).arrivals == 0
    clock.ms = base + 60_000
    [sent] = await parley.twilio.wait_for(1)
    assert sent.body == "You said: late"


async def test_twenty_texts_are_answered_at_once_whatever_the_window(
    make_parley: MakeParley, start_pool: StartPool, caplog: pytest.LogCaptureFixture,
) -> None:
    parley, rt = await build(make_parley, agent=agent_file(burst_window_ms=60_000))
    bodies = [f"text{n:02d}" for n in range(20)]
    for body in bodies:
        await put(rt, body)
    peeks = 0
    peek = rt.queue.peek

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal peeks
        peeks += 1
        return await peek(*args, **kwargs)

    rt.queue.peek = counted  # type: ignore[method-assign]
    await start_pool(rt)
    [sent] = await parley.twilio.wait_for(1)
    assert sent.body == "You said: text19"
    assert [user_texts(r) for r in held(parley).requests] == [bodies]
    assert not records(caplog, "turn failed")
    await parley.idle()
    assert peeks == 0, "the turn read the mailbox again instead of using what taking the lock read"


# The lock: taken, renewed, lost, given back.


async def _gone(redis: aioredis.Redis, key: str) -> bool:
    return not await redis.exists(key)


async def _exists(redis: aioredis.Redis, key: str) -> bool:
    return bool(await redis.exists(key))


async def test_a_lock_lost_mid_turn_is_logged_and_its_wakeup_acknowledged(
    make_parley: MakeParley, start_pool: StartPool, caplog: pytest.LogCaptureFixture,
) -> None:
    parley, rt = await build(make_parley, lock_ttl_ms=1_000)
    await start_pool(rt)
    held(parley).gate.clear()
    await put(rt, "hello")
    await held(parley).wait_for(lambda: held(parley).arrivals == 1)
    await parley.redis.set(keys.lock(CONV), "another-worker", px=60_000)   # it expired; another worker took it
    async with asyncio.timeout(5):                                        # the renewal finds it gone
        while not records(caplog, "lost the conversation lock mid-turn"):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    held(parley).gate.set()
    await until(lambda: _no_pending(parley.redis), what="the wake-up acknowledged")
    assert await mailbox(parley.redis) == ["hello"], "a holder that lost its lock wrote something"
    assert await parley.redis.get(keys.lock(CONV)) == "another-worker"


async def _no_pending(redis: aioredis.Redis, conv: Conversation = CONV) -> bool:
    return await pending(redis, conv) == 0


async def test_a_conversation_another_worker_holds_is_left_to_it(
    make_parley: MakeParley, start_pool: StartPool,
) -> None:
    parley, rt = await build(make_parley)
    await parley.redis.set(keys.lock(CONV), "the-holder", px=60_000)
    await put(rt, "hi")
    [entry] = await parley.redis.xrange(keys.wakeups(CONV.shard))  # type: ignore[misc]
    await start_pool(rt)

    await until(lambda: acknowledged(parley.redis, str(entry[0])), what="the wake-up read and acknowledged at once")
    assert await mailbox(parley.redis) == ["hi"]        # left for the holder
    assert await parley.redis.get(keys.lock(CONV)) == "the-holder"
    assert held(parley).arrivals == 0


async def test_a_wakeup_with_an_empty_mailbox_releases_the_lock_and_is_acknowledged(
    make_parley: MakeParley, start_pool: StartPool,
) -> None:
    parley, rt = await build(make_parley)
    entry = await parley.redis.xadd(keys.wakeups(CONV.shard), {"conv": CONV.id})
    await start_pool(rt)

    await until(lambda: acknowledged(parley.redis, str(entry)), what="the wake-up read and acknowledged")
    assert not await parley.redis.exists(keys.lock(CONV))
    assert held(parley).arrivals == 0


async def test_texts_that_arrive_during_a_turn_get_the_next_turn_of_the_same_holder(
    make_parley: MakeParley, start_pool: StartPool, caplog: pytest.LogCaptureFixture,
) -> None:
    parley, rt = await build(make_parley)
    await start_pool(rt)
    held(parley).gate.clear()
    await put(rt, "first")
    await held(parley).wait_for(lambda: held(parley).arrivals == 1)
    token = await parley.redis.get(keys.lock(CONV))
    await put(rt, "second")
    await put(rt, "third")
    await until(lambda: _no_pending_but(parley.redis, 1), what="the later wake-ups acknowledged by the holder")
    held(parley).gate.set()
    sent = await parley.twilio.wait_for(2, within_s=5)
    assert [m.body for m in sent] == ["You said: first", "You said: third"]
    assert [user_texts(r)[-2:] for r in held(parley).requests] == [["first"], ["second", "third"]]
    assert len(held(parley).requests[1]["messages"]) == 5          # system, first, its answer, second, third
    assert token is not None
    await parley.idle()
    assert not records(caplog, "turn failed") and not records(caplog, "conversation task failed")


async def _no_pending_but(redis: aioredis.Redis, count: int) -> bool:
    return await pending(redis) == count


# Turns that fail.


async def test_a_retried_turn_takes_the_texts_that_arrived_meanwhile(
    make_parley: MakeParley, start_pool: StartPool, caplog: pytest.LogCaptureFixture,
) -> None:
    parley, rt = await build(make_parley, catalog_cache_ms=0)
    saved: Any = await parley.redis.hgetall(keys.llm("llm_frontdesk"))
    await parley.redis.delete(keys.llm("llm_frontdesk"))
    await start_pool(rt)
    await put(rt, "hello")
    async with asyncio.timeout(5):
        while not records(caplog, "turn failed"):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await put(rt, "are you there?")
    await parley.redis.hset(keys.llm("llm_frontdesk"), mapping=saved)
    [sent] = await parley.twilio.wait_for(1)
    assert sent.body == "You said: are you there?"
    assert [user_texts(r) for r in held(parley).requests] == [["hello", "are you there?"]]
    await parley.idle()
    assert len(parley.twilio.messages) == 1


async def test_a_conversation_that_fails_outside_a_turn_is_logged_and_the_pool_goes_on(
    make_parley: MakeParley, start_pool: StartPool, caplog: pytest.LogCaptureFixture,
) -> None:
    # Unreadable stored data fails the conversation's task (its wake-up stays pending, to be tried again);
    # the slot it held is free again for other conversations.
    parley, rt = await build(make_parley, workers=1)
    await parley.redis.rpush(keys.mailbox(CONV), "not an item")
    await parley.redis.xadd(keys.wakeups(CONV.shard), {"conv": CONV.id})
    await start_pool(rt)
    async with asyncio.timeout(5):
        while not records(caplog, "conversation task failed"):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert records(caplog, "conversation task failed")[0].task == f"conv {CONV.id}"  # type: ignore[attr-defined]
    assert await pending(parley.redis) == 1
    other = Conversation(AGENT_NUMBER, "+14155550999")
    await put(rt, "hi", conv=other)
    [sent] = await parley.twilio.wait_for(1)
    assert (sent.to, sent.body) == (other.user_number, "You said: hi")


# How many run at once, and what is read.


async def test_at_most_workers_conversations_run_at_once(
    make_parley: MakeParley, start_pool: StartPool, redis_url: str,
) -> None:
    parley, rt = await build(make_parley, workers=2)
    *users, late_user = users_in_distinct_partitions(5)
    convs = [Conversation(AGENT_NUMBER, user) for user in users]
    late = Conversation(AGENT_NUMBER, late_user)
    for conv in convs:
        await put(rt, "hi", conv=conv)
    held(parley).gate.clear()
    await start_pool(rt)

    async def all_read() -> bool:   # one read over every partition brings all four: more than there is room for
        return sum([len(await delivered(parley.redis, c)) for c in convs]) == 4

    await until(all_read, what="the four wake-ups read")
    await held(parley).wait_for(lambda: held(parley).arrivals == 2)
    locks = sum([await parley.redis.exists(keys.lock(c)) for c in convs])
    assert locks == 2, "more conversations started than there are workers"
    # Two run and two wait, read: the pool is more than full, so it reads nothing more. (On a cluster each
    # partition has its own reader, already waiting on its stream: it may bring one more to the backlog.)
    await put(rt, "later", conv=late)
    if not is_cluster(redis_url):
        assert await delivered(parley.redis, late) == []
    held(parley).gate.set()
    await parley.twilio.wait_for(5)
    assert sorted(m.to for m in parley.twilio.messages) == sorted([*users, late_user])
    assert held(parley).most_waiting == 2
    await parley.idle()


@pytest.mark.parametrize(("workers", "cluster", "count"), [(4, False, 2), (1_000, False, 100), (4, True, 1),
                                                           (68, True, 4)])
async def test_each_reader_asks_for_a_fair_share_of_the_free_slots(
    make_parley: MakeParley, start_pool: StartPool, redis_url: str,
    workers: int, cluster: bool, count: int,
) -> None:
    if is_cluster(redis_url) and not cluster:
        pytest.skip("the single-Redis reader needs a single Redis")
    parley, rt = await build(make_parley, workers=workers)
    if cluster and not is_cluster(redis_url):
        # One reader per partition, as on Redis Cluster (a single Redis answers the same commands).
        rt = dataclasses.replace(rt, settings=rt.settings.model_copy(update={"redis_cluster": True}))
    reads: list[tuple[tuple[str, ...], int]] = []
    read = rt.queue.read

    async def spy(consumer: str, streams: list[str], n: int, *, block_ms: int) -> Any:
        reads.append((tuple(streams), n))
        return await read(consumer, streams, n, block_ms=block_ms)

    rt.queue.read = spy  # type: ignore[method-assign,assignment]
    started = time.monotonic()
    await start_pool(rt)
    await put(rt, "hi")
    await parley.twilio.wait_for(1)
    elapsed = time.monotonic() - started
    streams = tuple(rt.queue.streams)
    if cluster:
        assert {s for s, _ in reads} == {(s,) for s in streams}
    else:
        assert {s for s, _ in reads} == {streams}
    assert {n for _, n in reads} == {count}
    # Each read waits up to a second for a wake-up: a reader does not spin.
    assert len(reads) <= (elapsed + 2) * (len(streams) if cluster else 1), "the readers do not wait for wake-ups"


async def test_a_read_brings_no_more_than_there_is_room_for(make_parley: MakeParley, start_pool: StartPool) -> None:
    parley, rt = await build(make_parley, workers=1)
    first, second = (Conversation(AGENT_NUMBER, u) for u in users_in_one_partition(2))
    await put(rt, "one", conv=first)
    await put(rt, "two", conv=second)
    held(parley).gate.clear()
    await start_pool(rt)
    await held(parley).wait_for(lambda: held(parley).arrivals == 1)
    assert len(await delivered(parley.redis, first)) == 1, "read more wake-ups than there are workers"
    held(parley).gate.set()
    sent = await parley.twilio.wait_for(2)
    assert [m.to for m in sent] == [first.user_number, second.user_number]


async def test_a_reclaim_takes_no_more_than_the_room_left(make_parley: MakeParley, start_pool: StartPool) -> None:
    parley, rt = await build(make_parley, workers=4)       # each read or reclaim asks for at most 2
    dead = [Conversation(AGENT_NUMBER, u) for u in users_in_one_partition(2)]
    live = [Conversation(AGENT_NUMBER, u) for u in users_in_distinct_partitions(16)
            if Conversation(AGENT_NUMBER, u).shard != dead[0].shard][:3]
    for conv in dead:
        await put(rt, "hello", conv=conv)
    assert len(await rt.queue.read("dead-worker", [keys.wakeups(dead[0].shard)], 10, block_ms=100)) == 2
    for conv in live:
        await put(rt, "hi", conv=conv)
    held(parley).gate.clear()
    await start_pool(rt)
    await held(parley).wait_for(lambda: held(parley).arrivals == 3)    # one slot left

    async def owners() -> list[str]:
        return sorted(e["consumer"] for e in await delivered(parley.redis, dead[0]))

    async def one_reclaimed() -> bool:
        return any(owner != "dead-worker" for owner in await owners())

    await until(one_reclaimed, within_s=5, what="a dead worker's wake-up reclaimed")
    assert (await owners()).count("dead-worker") == 1, "reclaimed more wake-ups than there was room for"
    held(parley).gate.set()
    await parley.twilio.wait_for(5, within_s=8)
    assert sorted(m.to for m in parley.twilio.messages) == sorted(c.user_number for c in dead + live)


async def test_a_cancel_that_redis_swallows_still_stops_the_pool(
    make_parley: MakeParley, start_pool: StartPool,
) -> None:
    # redis-py on Python 3.11 can swallow a cancel mid-command; the reader checks for one itself.
    _parley, rt = await build(make_parley)
    read = rt.queue.read
    reading = asyncio.Event()

    async def swallowing(consumer: str, streams: list[str], n: int, *, block_ms: int) -> Any:
        reading.set()
        try:
            return await read(consumer, streams, n, block_ms=block_ms)
        except asyncio.CancelledError:
            return []

    rt.queue.read = swallowing  # type: ignore[method-assign,assignment]
    _pool, task = await start_pool(rt)
    await reading.wait()
    task.cancel()
    await asyncio.wait({task}, timeout=3)
    assert task.done() and task.cancelled()


# Dead workers, shutdown, and Redis going away.


async def test_shutdown_lets_a_running_turn_finish(make_parley: MakeParley, start_pool: StartPool) -> None:
    parley, rt = await build(make_parley)
    pool, task = await start_pool(rt)
    held(parley).gate.clear()
    await put(rt, "hello")
    await held(parley).wait_for(lambda: held(parley).arrivals == 1)
    await stop_task(task)                                   # no more reading
    assert task.cancelled()
    draining = asyncio.create_task(pool.drain(5))
    held(parley).gate.set()
    await draining
    assert [m.body for m in parley.twilio.messages] == ["You said: hello"]
    assert await pending(parley.redis) == 0
    assert not await parley.redis.exists(keys.lock(CONV))


async def test_shutdown_cancels_a_turn_that_outlasts_the_drain_and_gives_its_conversation_back(
    make_parley: MakeParley, start_pool: StartPool, caplog: pytest.LogCaptureFixture,
) -> None:
    parley, rt = await build(make_parley)
    pool, task = await start_pool(rt)
    held(parley).gate.clear()
    await put(rt, "hello")
    await held(parley).wait_for(lambda: held(parley).arrivals == 1)
    await stop_task(task)
    assert task.cancelled()
    started = time.monotonic()
    await pool.drain(0.2)
    assert time.monotonic() - started < 2
    assert not await parley.redis.exists(keys.lock(CONV)), "the cancelled turn kept its lock"
    assert await pending(parley.redis) == 1 and await mailbox(parley.redis) == ["hello"]
    assert [r.count for r in records(caplog, "cancelled turns at shutdown; their wake-ups will be reclaimed")] == [1]  # type: ignore[attr-defined]
    assert parley.twilio.messages == []
    held(parley).gate.set()
    await start_pool(rt)                                     # the next process answers it
    [sent] = await parley.twilio.wait_for(1, within_s=5)
    assert sent.body == "You said: hello"


async def test_shutdown_with_nothing_running_returns_at_once(make_parley: MakeParley, start_pool: StartPool) -> None:
    parley, rt = await build(make_parley)
    pool, task = await start_pool(rt)
    await put(rt, "hi")
    await parley.twilio.wait_for(1)
    await parley.idle()
    await stop_task(task)
    started = time.monotonic()
    await pool.drain(30)
    assert time.monotonic() - started < 1


async def test_a_turn_cut_off_by_an_outage_gives_its_lock_back_as_soon_as_redis_returns(
    make_parley: MakeParley, start_pool: StartPool, redis_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    if is_cluster(redis_url):
        pytest.skip("the proxy stands in front of a single Redis")
    target = urlsplit(redis_url)
    async with Proxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        # One worker, so a turn that kept its slot would also keep the retry from starting.
        parley, rt = await build(make_parley, redis_url=f"redis://127.0.0.1:{proxy.port}{target.path}",
                                 workers=1, lock_ttl_ms=10_000)
        await start_pool(rt)
        held(parley).gate.clear()
        await put(rt, "hello")
        await held(parley).wait_for(lambda: held(parley).arrivals == 1)
        proxy.cut()
        held(parley).gate.set()                       # the LLM answers; the turn cannot go on without Redis
        await held(parley).wait_for(lambda: held(parley).answered == 1)
        refused = proxy.refused
        async with asyncio.timeout(5):              # it keeps trying to give the lock back
            while proxy.refused < refused + 4:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert await parley.redis.exists(keys.lock(CONV))
        proxy.restore()
        back = time.monotonic()
        await until(lambda: _gone(parley.redis, keys.lock(CONV)), within_s=2.0, what="the lock given back")
        assert records(caplog, "conversation task failed")
        # The wake-up was left pending: reclaimed and run again within seconds, well before the lock's TTL.
        [sent] = await parley.twilio.wait_for(1, within_s=6)
        assert sent.body == "You said: hello" and time.monotonic() - back < 6
        assert held(parley).arrivals == 2
        await parley.idle()


async def test_a_turn_cut_off_by_an_outage_longer_than_its_lock_stops_trying_to_give_it_back(
    make_parley: MakeParley, start_pool: StartPool, redis_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    if is_cluster(redis_url):
        pytest.skip("the proxy stands in front of a single Redis")
    target = urlsplit(redis_url)
    async with Proxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        parley, rt = await build(make_parley, redis_url=f"redis://127.0.0.1:{proxy.port}{target.path}",
                                 workers=1, lock_ttl_ms=1_000)
        await start_pool(rt)
        held(parley).gate.clear()
        await put(rt, "hello")
        await held(parley).wait_for(lambda: held(parley).arrivals == 1)
        proxy.cut()
        held(parley).gate.set()
        # Past the lock's TTL there is nothing left to give back: the turn gives up (its slot is free again)
        # while Redis is still away.
        async with asyncio.timeout(5):
            while not records(caplog, "conversation task failed"):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert proxy.down
        proxy.restore()
        [sent] = await parley.twilio.wait_for(1, within_s=6)
        assert sent.body == "You said: hello"
        await parley.idle()


async def test_a_wakeup_stream_deleted_under_a_blocked_reader_is_recreated(
    make_parley: MakeParley, start_pool: StartPool, redis_url: str,
) -> None:
    if is_cluster(redis_url):
        pytest.skip("CLIENT LIST on a single Redis")
    parley, rt = await build(make_parley)
    _pool, task = await start_pool(rt)
    await until(lambda: _reading(parley.redis), what="the pool blocked on XREADGROUP")
    await parley.redis.delete(*rt.queue.streams)             # Redis lost them (an eviction, a mistake)
    await until(lambda: _groups_back(parley.redis, rt), what="the groups recreated")
    await put(rt, "still there?")
    [sent] = await parley.twilio.wait_for(1, within_s=5)
    assert sent.body == "You said: still there?"
    assert not task.done()


async def test_a_reader_unblocked_by_an_operator_carries_on(
    make_parley: MakeParley, start_pool: StartPool, redis_url: str,
) -> None:
    if is_cluster(redis_url):
        pytest.skip("CLIENT UNBLOCK on a single Redis")
    parley, rt = await build(make_parley)
    _pool, task = await start_pool(rt)
    await until(lambda: _reading(parley.redis), what="the pool blocked on XREADGROUP")
    [reader] = [c for c in await parley.redis.client_list() if c.get("cmd") == "xreadgroup"]
    assert await parley.redis.client_unblock(int(reader["id"]), error=True)
    await put(rt, "hello")
    [sent] = await parley.twilio.wait_for(1, within_s=5)
    assert sent.body == "You said: hello"
    assert not task.done()


async def _reading(redis: aioredis.Redis) -> bool:
    return any(c.get("cmd") == "xreadgroup" for c in await redis.client_list())


async def _groups_back(redis: aioredis.Redis, rt: Runtime) -> bool:
    for stream in rt.queue.streams:
        if not await redis.exists(stream) or not await redis.xinfo_groups(stream):
            return False
    return True


# The slowest last (the mutation run stops at the first failing test).


async def test_the_lock_is_renewed_every_third_of_its_ttl_while_a_turn_runs(
    make_parley: MakeParley, start_pool: StartPool,
) -> None:
    # A 1.5 s TTL: a loaded CI machine may stall the loop for a few hundred ms, which a 1 s TTL did not survive (the
    # LLM's 5 s timeout in tests bounds how long the turn can be held).
    parley, rt = await build(make_parley, lock_ttl_ms=1_500)
    await start_pool(rt)
    held(parley).gate.clear()
    await put(rt, "slow")
    await held(parley).wait_for(lambda: held(parley).arrivals == 1)
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    while time.monotonic() - started < 3.75:                  # two and a half TTLs
        samples.append((time.monotonic(), int(await parley.redis.pttl(keys.lock(CONV)))))
        await asyncio.sleep(0.01)
    assert min(ttl for _, ttl in samples) > 0, "the lock expired while the turn ran"
    renewals = [at for (_, before), (at, ttl) in itertools.pairwise(samples) if ttl > before]
    gaps = [b - a for a, b in itertools.pairwise(renewals)]
    assert 5 <= len(renewals) <= 9, renewals                   # every 1/2 s over 3.75 s
    assert 0.375 < (renewals[-1] - renewals[0]) / len(gaps) < 0.675, gaps
    assert min(gaps) > 0.3, gaps
    assert max(ttl for _, ttl in samples) > 1_350              # renewed to the whole TTL
    held(parley).gate.set()
    [sent] = await parley.twilio.wait_for(1)
    assert sent.body == "You said: slow"
    await until(lambda: _gone(parley.redis, keys.lock(CONV)), what="the lock released")


async def test_a_turn_that_raises_is_tried_three_times_then_answered_with_the_fallback_and_counted(
    make_parley: MakeParley, start_pool: StartPool, caplog: pytest.LogCaptureFixture,
) -> None:
    parley, rt = await build(make_parley, agent=agent_file(fallback_message=FALLBACK), catalog_cache_ms=0)
    saved: Any = await parley.redis.hgetall(keys.llm("llm_frontdesk"))
    await parley.redis.delete(keys.llm("llm_frontdesk"))     # every turn of the agent now raises NotFound
    await start_pool(rt)
    await put(rt, "anyone?")
    [sent] = await parley.twilio.wait_for(1)
    answered_at = time.time()
    assert (sent.to, sent.body) == (USER, FALLBACK)
    failures = records(caplog, "turn failed")
    assert [r.attempt for r in failures] == [1, 2, 3]           # type: ignore[attr-defined]
    times = [r.created for r in failures]
    assert 0.5 <= times[1] - times[0] < 1.4                     # waits 0.5 s, then 1 s, then answers at once
    assert 1.0 <= times[2] - times[1] < 1.9
    assert answered_at - times[2] < 1.2
    assert held(parley).arrivals == 0
    await parley.idle()
    turns = rt.metrics.registry.get_sample_value
    assert turns("parley_turns_total", {"kind": "text", "outcome": "fallback"}) == 1
    assert turns("parley_turns_total", {"kind": "text", "outcome": "ok"}) is None

    await parley.redis.hset(keys.llm("llm_frontdesk"), mapping=saved)   # fixed: the next text is answered
    await put(rt, "and now?")
    sent2 = await parley.twilio.wait_for(2)
    assert sent2[-1].body == "You said: and now?"
    await parley.idle()
    assert turns("parley_turns_total", {"kind": "text", "outcome": "ok"}) == 1
    assert turns("parley_turn_seconds_count", {}) == 2
    assert 1.5 <= (turns("parley_turn_seconds_sum", {}) or 0) < 10


async def test_a_dead_workers_wakeup_waits_for_its_lock_to_expire_then_is_answered(
    make_parley: MakeParley, start_pool: StartPool,
) -> None:
    parley, rt = await build(make_parley)    # reclaim_idle_ms: 1 s
    await put(rt, "hello")
    [wakeup] = await rt.queue.read("dead-worker", [keys.wakeups(CONV.shard)], 10, block_ms=100)
    await parley.redis.set(keys.lock(CONV), "dead-token", px=60_000)   # it died holding the conversation
    await start_pool(rt)

    async def reclaimed_twice() -> bool:   # reclaimed, left pending as its lock is taken, reclaimed again
        entries = await delivered(parley.redis)
        return bool(entries) and entries[0]["times_delivered"] >= 3

    await until(reclaimed_twice, within_s=8, what="the wake-up reclaimed twice")
    [entry] = await delivered(parley.redis)
    assert entry["message_id"] == wakeup.entry_id and entry["consumer"] != "dead-worker"
    assert await mailbox(parley.redis) == ["hello"] and held(parley).arrivals == 0
    await parley.redis.delete(keys.lock(CONV))           # the dead worker's lock expires
    [sent] = await parley.twilio.wait_for(1, within_s=3)
    assert sent.body == "You said: hello"
    await parley.idle()



async def test_shutdown_waits_at_most_5_s_for_a_cancelled_turn_stuck_in_redis(
    make_parley: MakeParley, start_pool: StartPool, redis_url: str,
) -> None:
    if is_cluster(redis_url):
        pytest.skip("the proxy stands in front of a single Redis")
    target = urlsplit(redis_url)
    async with Proxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        parley, rt = await build(make_parley, redis_url=f"redis://127.0.0.1:{proxy.port}{target.path}")
        pool, task = await start_pool(rt)
        held(parley).gate.clear()
        await put(rt, "hello")
        await held(parley).wait_for(lambda: held(parley).arrivals == 1)
        await stop_task(task)
        proxy.flowing.clear()                        # Redis stops answering: the cancelled turn cannot let go
        started = time.monotonic()
        async with asyncio.timeout(8):
            await pool.drain(0)
        assert 4.9 < time.monotonic() - started < 5.8
        proxy.flowing.set()
        await until(lambda: _gone(parley.redis, keys.lock(CONV)), within_s=3, what="the lock given back")
