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

from .conftest import API_KEY, DEFAULT_NUMBERS, agent_file, redis_env, write_agents
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
