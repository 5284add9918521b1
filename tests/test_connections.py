"""``parley serve``'s connection bounds, with real sockets against a real process: at most
``PARLEY_MAX_CONNECTIONS`` open at once, idle ones closed after ``PARLEY_KEEPALIVE_TIMEOUT_S``, and so are
clients that trickle a request's head (service/cli/serving.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ResponseError

from service.settings import Settings
from service.storage.connection import connect, open_redis
from service.storage.pipelining import pipelined

from .conftest import API_KEY, DEFAULT_NUMBERS, agent_file, is_cluster, redis_env, write_agents
from .test_processes import Process

MAX_CONNECTIONS = 3
KEEPALIVE_S = 1.5

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def serve(redis: Any, redis_url: str, tmp_path: Path) -> AsyncIterator[Process]:
    write_agents(tmp_path / "agents", {"frontdesk": agent_file()}, DEFAULT_NUMBERS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "PARLEY_", "TWILIO_", "OPENAI_"))}
    env.update({**redis_env(redis_url), "PARLEY_AGENTS_DIR": str(tmp_path / "agents"), "PARLEY_API_KEY": API_KEY,
                "PARLEY_LOG_LEVEL": "WARNING", "PARLEY_DRAIN_TIMEOUT_S": "1", "PARLEY_PROCESSES": "1",
                "PARLEY_MAX_CONNECTIONS": str(MAX_CONNECTIONS), "PARLEY_KEEPALIVE_TIMEOUT_S": str(KEEPALIVE_S)})
    process = await Process(env, tmp_path / "parley.log").start()
    yield process
    assert await process.stop() == 0


class Client:
    """Raw connections to the server, each closed at the end of the test."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.opened: list[asyncio.StreamWriter] = []

    async def health(self) -> tuple[int, Connection]:
        """A new connection and ``GET /healthz`` on it, kept alive: the status (0 when the server closed or reset
        the connection instead of answering) and the connection."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.opened.append(writer)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: parley.test\r\n\r\n")
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
        except (ConnectionError, asyncio.IncompleteReadError):
            return 0, (reader, writer)
        return (int(status_line.split()[1]) if status_line else 0), (reader, writer)

    async def close(self) -> None:
        for writer in self.opened:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@pytest.fixture
async def client(serve: Process) -> AsyncIterator[Client]:
    connections = Client(serve.port)
    yield connections
    await connections.close()


async def closed_by_server(connection: Connection) -> None:
    """Returns when the server has closed ``connection`` (EOF, or a reset)."""
    reader, _ = connection
    with contextlib.suppress(ConnectionError):
        while await reader.read(1024):
            pass


async def test_connections_beyond_the_cap_are_refused_and_idle_ones_closed(serve: Process, client: Client) -> None:
    held: list[Connection] = []
    async with asyncio.timeout(10):
        while len(held) < MAX_CONNECTIONS:   # the readiness check's own connection may hold a slot a moment
            status, connection = await client.health()
            if status == 200:
                held.append(connection)
            else:
                await asyncio.sleep(0.05)
        status, refused = await client.health()
        assert status in (0, 503)        # answered 503 and closed, or closed before the client read it
        await closed_by_server(refused)
    assert "connections refused: PARLEY_MAX_CONNECTIONS are open" in serve.log.read_text()   # logged first

    started = time.monotonic()
    async with asyncio.timeout(KEEPALIVE_S + 5):   # idle connections are closed by the server...
        await asyncio.gather(*(closed_by_server(c) for c in held))
    assert time.monotonic() - started >= KEEPALIVE_S / 2

    async with asyncio.timeout(10):                # ...which frees their slots
        while True:
            if (await client.health())[0] == 200:
                break
            await asyncio.sleep(0.05)


async def test_a_trickled_request_head_is_cut_off(serve: Process, client: Client) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", serve.port)
    client.opened.append(writer)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: parley.test\r\n")   # and never the blank line
    async with asyncio.timeout(KEEPALIVE_S + 5):
        while True:   # a header every half second, for ever: the server cuts the connection
            try:
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                async with asyncio.timeout(0.5):
                    if await reader.read(1024) == b"":
                        break
            except TimeoutError:
                continue
            except ConnectionError:
                break


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
