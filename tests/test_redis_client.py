"""The Redis client Parley connects with (service/storage/connection.py): commands packed by hiredis to the bytes
redis-py packs, redis-py's pool without its per-command bookkeeping, warm connections, no package-metadata read
per connection; and ``pipelined`` (service/storage/pipelining.py), the turn's one round trip."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError

from service.settings import Settings
from service.storage.connection import (
    PackedConnection,
    PackedSSLConnection,
    PackedUnixDomainSocketConnection,
    connect,
    open_redis,
)
from service.storage.pipelining import evalsha, pipelined

from .conftest import is_cluster

PACKED_ALIKE: list[tuple[Any, ...]] = [
    ("PING",),
    ("SET", "{c}k", "v", "NX", "PX", 5000),
    ("EVALSHA", "0" * 40, 2, "{c}a", "{c}b", b'{"plan": [1, 2]}', 1_700_000_000_000, -3, 1.5, 0.1, 10**20),
    ("SET", "{c}text", "caf\u00e9 \U0001f600 \u00a0 plain"),
    ("SET", "{c}bytes", b"\x00\xff\r\n"),
    ("SET", "{c}big", "x" * 20_000),                      # past redis-py's buffer cutoff: it sends it in pieces
    ("SET", "{c}view", memoryview(b"from a view")),
    ("SET", "{c}array", bytearray(b"not hiredis's")),     # hiredis takes none: redis-py's packer
    ("CONFIG GET", "maxmemory"),                          # a space in the name: redis-py splits it
    (b"CLIENT LIST",),
]


@pytest.mark.parametrize("command", PACKED_ALIKE, ids=lambda c: str(c[0]))
def test_a_command_is_packed_to_the_bytes_redis_py_packs(command: tuple[Any, ...]) -> None:
    assert b"".join(PackedConnection().pack_command(*command)) == b"".join(Connection().pack_command(*command))


def test_several_commands_are_packed_to_the_bytes_redis_py_packs() -> None:
    assert b"".join(PackedConnection().pack_commands(PACKED_ALIKE)) == b"".join(
        Connection().pack_commands(PACKED_ALIKE))


@pytest.mark.parametrize("value", [None, True, object()], ids=repr)
def test_an_argument_redis_cannot_take_is_refused_as_redis_py_refuses_it(value: Any) -> None:
    with pytest.raises(DataError, match="Invalid input of type"):
        PackedConnection().pack_command("SET", "{c}k", value)


def test_text_in_another_encoding_is_packed_in_that_encoding() -> None:
    command = ("SET", "{c}k", "caf\u00e9")
    packed = b"".join(PackedConnection(encoding="latin-1").pack_command(*command))
    assert packed == b"".join(Connection(encoding="latin-1").pack_command(*command))
    assert b"caf\xe9" in packed


@pytest.mark.parametrize(("url", "packed", "base"), [
    ("redis://127.0.0.1:6379/0", PackedConnection, Connection),
    ("rediss://127.0.0.1:6380/0", PackedSSLConnection, SSLConnection),
    ("unix:///run/redis.sock?db=0", PackedUnixDomainSocketConnection, UnixDomainSocketConnection),
])
def test_every_scheme_keeps_its_connection_class_and_packs_in_c(url: str, packed: type, base: type) -> None:
    pool = connect(url).connection_pool
    assert pool.connection_class is packed
    assert issubclass(packed, base)


async def blpop(client: Any, key: str) -> Any:
    return await client.execute_command("BLPOP", key, 0.2)


@pytest.mark.redis
async def test_the_pool_lends_each_connection_to_one_command_at_a_time_and_takes_it_back(redis_url: str) -> None:
    if is_cluster(redis_url):
        pytest.skip("a cluster client has redis-py's pools, one per node")
    async with connect(redis_url, max_connections=4) as client:
        pool = client.connection_pool
        # Four commands blocked in Redis at once hold the four connections; each reply reaches its own caller.
        await client.rpush("{c}full2", "two")
        replies = await asyncio.gather(*(blpop(client, f"{{c}}full{i}") for i in range(4)))
        assert [list(r) if r else r for r in replies] == [None, None, ["{c}full2", "two"], None]
        assert not pool._in_use_connections
        assert len(pool._available_connections) == 4
        # A fifth at once is beyond the bound, as with redis-py's own pool.
        five = await asyncio.gather(*(blpop(client, f"{{c}}none{i}") for i in range(5)), return_exceptions=True)
        assert [type(r).__name__ for r in five].count("MaxConnectionsError") == 1 and five.count(None) == 4
        # A connection marked for reconnection is closed as it comes back, and opened again when next lent.
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        connection.mark_for_reconnect()
        await pool.release(connection)
        assert not connection.is_connected
        assert await client.echo("again") == "again"


@pytest.mark.redis
async def test_a_process_opens_its_warm_connections_as_it_starts(redis_url: str) -> None:
    if is_cluster(redis_url):
        pytest.skip("connections are warmed on a single server only (a cluster client's pools are per node)")
    settings = Settings.model_validate({"redis_url": redis_url, "redis_warm_connections": 12})
    async with connect(redis_url) as probe:
        before = int((await probe.info("clients"))["connected_clients"])
        async with open_redis(settings):
            opened = int((await probe.info("clients"))["connected_clients"]) - before
    assert opened >= 12   # the warm ones (and the first PING's, which one of them may reuse)


@pytest.mark.redis
async def test_a_new_connection_does_not_read_the_package_metadata(
    redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # redis-py left to itself looks its version up in the installed package's metadata for every connection it
    # opens: a burst of turns that opens dozens pays for that many parses of a METADATA file.
    import importlib.metadata

    looked_up: list[str] = []
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        looked_up.append(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    async with connect(redis_url) as client:
        await asyncio.gather(*(client.ping() for _ in range(8)))
    assert looked_up == []


@pytest.mark.redis
async def test_pipelined_answers_each_command_in_order_in_one_round_trip(redis: Any) -> None:
    await redis.hset("{p}h", mapping={"a": "1", "b": "2"})
    await redis.rpush("{p}l", "x", "y")
    replies = await pipelined(redis, [("SET", "{p}lock", "t", "NX", "PX", 5000), ("SET", "{p}lock", "u", "NX"),
                                      ("LRANGE", "{p}l", 0, -1), ("MGET", "{p}lock", "{p}none"), ("HGETALL", "{p}h"),
                                      ("HGETALL", "{p}none")])
    assert [bool(replies[0]), replies[1], *replies[2:]] == [
        True, None, ["x", "y"], ["t", None], {"a": "1", "b": "2"}, {}]
    assert await redis.get("{p}lock") == "t"


@pytest.mark.redis
async def test_pipelined_raises_an_error_reply_after_reading_every_reply(redis: Any) -> None:
    await redis.set("{p}s", "v")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await pipelined(redis, [("LPUSH", "{p}s", "x"), ("SET", "{p}after", "1")])
    assert await redis.get("{p}after") == "1"   # the commands after the error ran
    # and the connection went back in step: every next reply is its own command's
    for i in range(1, 21):
        assert await pipelined(redis, [("GET", "{p}s"), ("INCR", "{p}n")]) == ["v", i]


@pytest.mark.redis
async def test_a_pipelined_call_cancelled_mid_exchange_leaves_no_reply_for_the_next_caller(redis: Any) -> None:
    await redis.rpush("{p}q", "x")
    # BLPOP on an empty list blocks in Redis: the call is cancelled with its reply still to come.
    call = asyncio.create_task(pipelined(redis, [("LRANGE", "{p}q", 0, -1), ("BLPOP", "{p}empty", 0.5)]))
    await asyncio.sleep(0.1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.sleep(0.6)   # BLPOP's nil reply has been sent by now, to whatever holds that socket
    for i in range(1, 21):
        assert await pipelined(redis, [("INCR", "{p}n"), ("LRANGE", "{p}q", 0, -1)]) == [i, ["x"]]


async def together(client: Any, calls: list[list[tuple[Any, ...]]]) -> list[Any]:
    """``calls`` made at once (in one turn of the event loop); each one's replies, or what it raised."""
    return list(await asyncio.gather(*(pipelined(client, commands) for commands in calls), return_exceptions=True))


def connections(client: Any) -> int:
    pool = client.connection_pool
    return len(pool._available_connections) + len(pool._in_use_connections)


@pytest.mark.redis
async def test_calls_made_at_once_share_one_round_trip_and_each_gets_its_own_replies(redis_url: str) -> None:
    if is_cluster(redis_url):
        pytest.skip("on a cluster each call is a redis-py pipeline of its own")
    async with connect(redis_url) as client:
        await client.delete("{p}n")
        calls = [[("INCR", "{p}n"), ("ECHO", f"caller {i}")] for i in range(40)]
        replies = await together(client, calls)
        assert connections(client) == 1   # one round trip: separate ones at once would have opened 40 connections
        assert [r[1] for r in replies] == [f"caller {i}" for i in range(40)]
        assert [r[0] for r in replies] == list(range(1, 41))   # in the order they were made, in one write
        # A lone call goes on its own, as soon as the loop turns.
        assert await pipelined(client, [("GET", "{p}n")]) == ["40"]


@pytest.mark.redis
async def test_an_error_in_a_shared_round_trip_is_raised_to_its_own_caller_only(redis: Any) -> None:
    await redis.set("{p}s", "v")
    replies = await together(redis, [
        [("INCR", "{p}a")],
        [("LPUSH", "{p}s", "x"), ("SET", "{p}after", "1")],   # a Redis error reply
        [("SET", "{p}b", None)],                              # an argument Redis cannot take: never sent
        [("GET", "{p}s")],
    ])
    assert replies[0] == [1]
    assert isinstance(replies[1], ResponseError) and "WRONGTYPE" in str(replies[1])
    assert isinstance(replies[2], DataError)
    assert replies[3] == ["v"]
    assert await redis.mget("{p}a", "{p}after", "{p}b") == ["1", "1", None]


@pytest.mark.redis
async def test_a_caller_cancelled_before_its_round_trip_leaves_the_others_theirs(redis: Any, redis_url: str) -> None:
    if is_cluster(redis_url):
        pytest.skip("on a cluster each call is a redis-py pipeline of its own")
    loop = asyncio.get_running_loop()
    calls = [asyncio.create_task(pipelined(redis, [("INCR", "{p}n"), ("ECHO", f"caller {i}")])) for i in range(3)]
    loop.call_soon(calls[1].cancel)   # after the three queued their commands, before they went out
    done = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert done[0] == [1, "caller 0"] and done[2] == [3, "caller 2"]   # the cancelled one's INCR ran, unread
    for i in range(4, 24):
        assert await pipelined(redis, [("INCR", "{p}n"), ("ECHO", "next")]) == [i, "next"]


@pytest.mark.redis
async def test_a_round_trip_cancelled_before_it_went_out_cancels_its_calls_and_the_next_call_goes(
    redis: Any, redis_url: str,
) -> None:
    if is_cluster(redis_url):
        pytest.skip("on a cluster each call is a redis-py pipeline of its own")
    # As when a process shuts down and cancels every task it has, the round trip's among them.
    calls = [asyncio.create_task(pipelined(redis, [("INCR", "{p}n")])) for _ in range(2)]
    await asyncio.sleep(0)   # the two calls are queued, their round trip not yet started
    [exchange] = [t for t in asyncio.all_tasks() if t.get_name() == "parley-redis-exchange"]
    exchange.cancel()
    async with asyncio.timeout(5):   # not left waiting for a round trip that will never come
        done = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in done)
    assert await pipelined(redis, [("INCR", "{p}n")]) == [1]   # nothing of theirs was sent


@pytest.mark.redis
async def test_a_connection_lost_mid_round_trip_fails_the_calls_still_unanswered(redis_url: str) -> None:
    if is_cluster(redis_url):
        pytest.skip("on a cluster each call is a redis-py pipeline of its own")
    async with connect(redis_url) as client:
        replies = await together(client, [[("ECHO", "before")], [("QUIT",)], [("ECHO", "after")]])
        assert replies[0] == ["before"]
        assert replies[1] == ["OK"]   # QUIT's OK: the server then closed the connection
        assert isinstance(replies[2], RedisConnectionError)
        assert await pipelined(client, [("ECHO", "again")]) == ["again"]   # a new connection


@pytest.mark.redis
async def test_evalsha_gives_a_server_that_lost_its_scripts_the_script_again(redis: Any) -> None:
    script = redis.register_script("return {KEYS[1], ARGV[1]}")
    await redis.script_flush()
    assert await evalsha(redis, script, ["{p}k"], ["v"]) == ["{p}k", "v"]
    assert await evalsha(redis, script, ["{p}k"], ["w"]) == ["{p}k", "w"]
    await redis.set("{p}k2", "a string")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await evalsha(redis, redis.register_script("return redis.call('LPUSH', KEYS[1], 'x')"), ["{p}k2"], [])
