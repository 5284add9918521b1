"""Opt-outs (service/sms/optouts.py): recorded once, never expiring, cleared only on request, listed in order."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from service.address import Conversation
from service.metrics import Metrics
from service.sms import optouts as optouts_module
from service.sms.optouts import OptOut, OptOuts
from service.storage import keys

from .conftest import is_cluster

AGENT = "+15035550100"
OTHER_AGENT = "+15035550199"


class Clock:
    """now_ms for the module under test, set by the test."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(1_700_000_000_000)
    monkeypatch.setattr(optouts_module, "now_ms", fake)
    return fake


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def store(redis: aioredis.Redis, metrics: Metrics) -> OptOuts:
    return OptOuts(redis, metrics)


def users_in_one_shard(count: int, *, agent: str = AGENT, channel: str = "sms") -> list[str]:
    """``count`` user numbers whose conversations with ``agent`` land in the same partition."""
    by_shard: dict[int, list[str]] = {}
    for n in itertools.count():
        user = f"+1415555{n:04d}"
        found = by_shard.setdefault(Conversation(agent, user, channel).shard, [])
        found.append(user)
        if len(found) == count:
            return found
    raise AssertionError("unreachable")


def recorded(metrics: Metrics, source: str) -> float:
    value = metrics.registry.get_sample_value("parley_optouts_total", {"source": source})
    return value or 0.0


async def test_record_stores_the_time_without_a_ttl(store: OptOuts, redis: aioredis.Redis, clock: Clock) -> None:
    conv = Conversation(AGENT, "+14155550123")
    assert not await store.is_opted_out(conv)
    await store.record(conv)
    assert await store.is_opted_out(conv)
    assert await redis.get(keys.optout(conv)) == str(clock.ms)
    assert await redis.ttl(keys.optout(conv)) == -1, "an opt-out must never expire"
    assert await redis.zrange(keys.optouts(conv.shard), 0, -1, withscores=True) == [
        (f"{AGENT} +14155550123", float(clock.ms))]
    assert await redis.ttl(keys.optouts(conv.shard)) == -1


async def test_a_second_opt_out_keeps_the_first_time(store: OptOuts, redis: aioredis.Redis, clock: Clock) -> None:
    conv = Conversation(AGENT, "+14155550123")
    first = clock.ms
    await store.record(conv)
    clock.ms += 60_000
    await store.record(conv, source="twilio_21610")
    assert await redis.get(keys.optout(conv)) == str(first)
    assert await redis.ttl(keys.optout(conv)) == -1
    assert await store.all() == [OptOut(AGENT, "+14155550123", first)]


async def test_record_counts_each_opt_out_by_source(store: OptOuts, metrics: Metrics, clock: Clock) -> None:
    await store.record(Conversation(AGENT, "+14155550123"))
    await store.record(Conversation(AGENT, "+14155550124"), source="status_21610")
    await store.record(Conversation(AGENT, "+14155550125"), source="status_21610")
    assert recorded(metrics, "keyword") == 1
    assert recorded(metrics, "status_21610") == 2


async def test_clear_removes_only_that_conversations_opt_out(
    store: OptOuts, redis: aioredis.Redis, clock: Clock,
) -> None:
    users = users_in_one_shard(2)
    conv, neighbour = Conversation(AGENT, users[0]), Conversation(AGENT, users[1])
    on_whatsapp = Conversation(AGENT, users[0], "whatsapp")
    for c in (conv, neighbour, on_whatsapp):
        await store.record(c)
    assert await store.clear(conv) is True
    assert not await store.is_opted_out(conv)
    assert await redis.exists(keys.optout(conv)) == 0
    assert await store.is_opted_out(neighbour)
    assert await store.is_opted_out(on_whatsapp)
    assert await store.all() == [   # same time: ordered by agent address ("+" before "whatsapp:")
        OptOut(AGENT, users[1], clock.ms), OptOut(f"whatsapp:{AGENT}", f"whatsapp:{users[0]}", clock.ms)]
    assert await store.clear(conv) is False, "nothing left to clear"


async def test_clear_without_an_opt_out_is_false_and_changes_nothing(store: OptOuts, clock: Clock) -> None:
    await store.record(Conversation(AGENT, "+14155550123"))
    assert await store.clear(Conversation(AGENT, "+14155550999")) is False
    assert await store.all() == [OptOut(AGENT, "+14155550123", clock.ms)]


async def test_an_opt_out_after_a_clear_gets_the_new_time(store: OptOuts, redis: aioredis.Redis, clock: Clock) -> None:
    conv = Conversation(AGENT, "+14155550123")
    await store.record(conv)
    await store.clear(conv)
    clock.ms += 5_000
    await store.record(conv)
    assert await redis.get(keys.optout(conv)) == str(clock.ms)
    assert await store.all() == [OptOut(AGENT, "+14155550123", clock.ms)]


async def test_list_is_empty_without_opt_outs(store: OptOuts) -> None:
    assert await store.all() == []
    assert await store.all(AGENT) == []


async def test_list_is_oldest_first_across_partitions(store: OptOuts, clock: Clock) -> None:
    start = clock.ms
    users = [f"+1415555{n:04d}" for n in range(40)]   # 40 conversations: every partition holds some
    assert len({Conversation(AGENT, u).shard for u in users}) > 8
    for i, user in enumerate(reversed(users)):
        clock.ms = start + i
        await store.record(Conversation(AGENT, user))
    listed = await store.all()
    assert listed == [OptOut(AGENT, user, start + i) for i, user in enumerate(reversed(users))]


async def test_list_includes_every_opt_out_of_a_partition(store: OptOuts, clock: Clock) -> None:
    users = users_in_one_shard(4)
    start = clock.ms
    for i, user in enumerate(users):
        clock.ms = start + 10 * i
        await store.record(Conversation(AGENT, user))
    assert await store.all() == [OptOut(AGENT, user, start + 10 * i) for i, user in enumerate(users)]


async def test_list_ties_are_ordered_by_agent_then_user(store: OptOuts, clock: Clock) -> None:
    convs = [Conversation(OTHER_AGENT, "+14155550001"), Conversation(AGENT, "+14155550009"),
             Conversation(OTHER_AGENT, "+14155550000"), Conversation(AGENT, "+14155550002")]
    for conv in convs:
        await store.record(conv)   # all at the same millisecond
    assert [(o.agent_number, o.user_number) for o in await store.all()] == [
        (AGENT, "+14155550002"), (AGENT, "+14155550009"),
        (OTHER_AGENT, "+14155550000"), (OTHER_AGENT, "+14155550001")]


async def test_list_filters_by_agent_number_on_every_channel(store: OptOuts, clock: Clock) -> None:
    start = clock.ms
    recorded_convs = [
        Conversation(AGENT, "+14155550001"),
        Conversation(OTHER_AGENT, "+14155550002"),
        Conversation(AGENT, "+14155550003", "whatsapp"),
        Conversation(OTHER_AGENT, "+14155550004", "whatsapp"),
    ]
    for i, conv in enumerate(recorded_convs):
        clock.ms = start + i
        await store.record(conv)
    assert await store.all(AGENT) == [
        OptOut(AGENT, "+14155550001", start), OptOut(f"whatsapp:{AGENT}", "whatsapp:+14155550003", start + 2)]
    assert await store.all(OTHER_AGENT) == [
        OptOut(OTHER_AGENT, "+14155550002", start + 1),
        OptOut(f"whatsapp:{OTHER_AGENT}", "whatsapp:+14155550004", start + 3)]
    assert await store.all("+15035550111") == []
    assert await store.all("whatsapp") == [], "the filter is a number, never a channel"
    assert len(await store.all()) == 4


# --- atomicity, seen through MONITOR -----------------------------------------------------------------

Commands = Callable[[Callable[[], Awaitable[object]]], Awaitable[list[str]]]
SEEN = {"MULTI", "EXEC", "SET", "ZADD", "DEL", "ZREM", "ZRANGE"}


@pytest.fixture
async def commands(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[Commands]:
    """``await commands(action)``: the names of the data commands Redis ran for ``action``, in order."""
    if is_cluster(redis_url):
        pytest.skip("MONITOR watches one node; the cluster pass checks the cross-slot rules instead")
    watcher = aioredis.Redis.from_url(redis_url, decode_responses=True)
    db = redis.connection_pool.connection_kwargs.get("db", 0)

    async def run(action: Callable[[], Awaitable[object]]) -> list[str]:
        start, end = f"start-{uuid.uuid4()}", f"end-{uuid.uuid4()}"
        async with watcher.monitor() as monitor:
            await redis.echo(start)
            await action()
            await redis.echo(end)
            seen: list[str] = []
            started = False
            async with asyncio.timeout(5):
                while True:
                    seen_by = await monitor.next_command()
                    if seen_by["db"] != db:   # another test session on the same server
                        continue
                    command = seen_by["command"]
                    started = started or command == f"ECHO {start}"
                    if command == f"ECHO {end}":
                        return seen
                    if started and command.split()[0] in SEEN:
                        seen.append(command.split()[0])

    yield run
    await watcher.aclose()


async def test_record_writes_the_opt_out_and_its_list_entry_in_one_transaction(
    store: OptOuts, commands: Commands, clock: Clock,
) -> None:
    conv = Conversation(AGENT, "+14155550123")
    assert await commands(lambda: store.record(conv)) == ["MULTI", "SET", "ZADD", "EXEC"]
    assert await store.all() == [OptOut(AGENT, "+14155550123", clock.ms)]


async def test_clear_removes_the_opt_out_and_its_list_entry_in_one_transaction(
    store: OptOuts, commands: Commands, clock: Clock,
) -> None:
    conv = Conversation(AGENT, "+14155550123")
    await store.record(conv)
    assert await commands(lambda: store.clear(conv)) == ["MULTI", "DEL", "ZREM", "EXEC"]
    assert await store.all() == []


async def test_the_list_reads_every_partition_without_a_transaction(store: OptOuts, commands: Commands) -> None:
    # A transaction across partitions would be refused on a Redis Cluster (they live in different slots).
    assert await commands(store.all) == ["ZRANGE"] * keys.SHARDS


async def test_a_user_address_is_everything_after_the_first_space(store: OptOuts, clock: Clock) -> None:
    # Twilio's From is not validated here: a malformed one with a space is still listed whole.
    await store.record(Conversation(AGENT, "+1 415 555 0123"))
    assert await store.all() == [OptOut(AGENT, "+1 415 555 0123", clock.ms)]
    assert await store.all(AGENT) == [OptOut(AGENT, "+1 415 555 0123", clock.ms)]
