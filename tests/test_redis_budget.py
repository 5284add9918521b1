"""The Redis budget of a text (issue 18): the commands Redis runs for it and the round trips Parley waits on.

Counted exactly, not timed, so a change that adds a command or a round trip fails here at once, with the
breakdown that shows what was added; one that removes some fails too, asking for the lower number, so every
cut stays cut. The budgets are the ``BUDGETS`` table below: the one place to change when the numbers move.

How a text's Redis work is told apart from the rest (the scheduler's polls, the workers' blocking reads, the
console counters' flush, the test's own reads), with Parley running in this process:

- **Who sent it.** An aiohttp middleware (outermost) sets a context variable to ``webhook`` (``/twilio/sms``) or
  ``api`` for the request, and a task factory sets it to ``turn`` for the worker's conversation task
  (``WorkerPool._handle``: the lock, the turn, the commit); tasks those start inherit it. Everything else
  (background loops, the reader whose ``XREADGROUP`` hands the wake-up over, the test) is left out.
- **Round trips.** ``send_packed_command`` of redis-py's connection is wrapped: one call is one request Parley
  sends and waits on (a pipeline is one, an ``EVALSHA`` is one). The calls a connection makes for itself
  (the handshake of a new connection, a health-check ``PING``) are not the text's and are left out. The
  packed bytes are parsed back into the commands they carry, named as ``INFO commandstats`` names them.
- **Commands run inside Lua.** A ``MONITOR`` connection sees each script's ``redis.call``s right after the
  ``EVALSHA`` that ran them (a script is atomic), and that ``EVALSHA``'s client address is the local port of
  the Parley connection that sent it. The k-th ``EVALSHA`` of a script on a port, in the window, is the k-th
  one Parley sent there; a count that does not line up fails the test rather than guess.

Each text is counted twice: with the catalog (numbers, agents) served from the process's cache for the whole
test, as under load (``catalog_cache_ms`` at its maximum), and read from Redis every time (``catalog_cache_ms=0``,
as for a lone text). The window opens after a warm-up conversation and API chat (scripts loaded, connections
open, caches filled, the day's segment counter made) and closes once the reply has reached the fake Twilio, the
turn's task has ended, and a marker sent after it has come back through ``MONITOR``. No sleep decides anything; a
wake-up is reclaimed only after the default minute, so a slow machine runs no second turn.

The counts agree with ``bench.run``'s ``count`` phase (``INFO commandstats`` over 300 follow-up texts, which
also holds the background loops' share and the reader's ``XREADGROUP``): see ``bench/README.md``. On Redis
Cluster the same work is split by node (one reader per partition, pipelines per slot): not counted there.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.connection import AbstractConnection

from service.app import create_app

from .conftest import (
    DEFAULT_NUMBERS,
    Parley,
    agent_file,
    build_settings,
    is_cluster,
    write_agents,
)
from .fakes.openai import FakeOpenAI
from .fakes.twilio import FakeTwilio


@dataclass(frozen=True)
class Budget:
    """What one text may cost: the commands Redis runs for it (sent, and run inside Lua scripts), and the round
    trips Parley waits on in the request that takes it (the Twilio webhook, or the API call) and in its turn."""

    commands: int
    request_round_trips: int
    turn_round_trips: int


# Today's counts, exact: a count above its budget fails (a regression), and so does one below it (lower the
# budget, so the cut stays cut). "cached catalog": numbers and agents come from the process's cache, as under
# load (the benchmark's ``count`` phase); "uncached catalog": read from Redis every time (``catalog_cache_ms=0``).
BUDGETS = {
    "cached catalog": {
        "first text": Budget(commands=44, request_round_trips=1, turn_round_trips=4),
        "follow-up": Budget(commands=19, request_round_trips=1, turn_round_trips=3),
        "api message": Budget(commands=10, request_round_trips=6, turn_round_trips=0),
    },
    "uncached catalog": {
        "first text": Budget(commands=53, request_round_trips=2, turn_round_trips=8),
        "follow-up": Budget(commands=24, request_round_trips=2, turn_round_trips=7),
        "api message": Budget(commands=13, request_round_trips=9, turn_round_trips=0),
    },
}
CATALOG_CACHE_MS = {"cached catalog": 60_000, "uncached catalog": 0}

# What a send is part of: the request being handled ("webhook", "api") or a conversation's turn ("turn").
PART: contextvars.ContextVar[str | None] = contextvars.ContextVar("redis_budget_part", default=None)
# Set while a connection talks for itself (its handshake, a health check): those sends are not counted.
_OWN: contextvars.ContextVar[bool] = contextvars.ContextVar("redis_budget_own", default=False)
TURN_TASK = "WorkerPool._handle"
CONTAINERS = {"acl", "client", "cluster", "command", "config", "function", "latency", "memory", "module", "object",
              "pubsub", "script", "slowlog", "xgroup", "xinfo"}   # commandstats names them "name|subcommand"
SCRIPTS = {"evalsha", "eval", "evalsha_ro", "eval_ro"}


def command_name(args: list[bytes]) -> str:
    """A command as ``INFO commandstats`` names it."""
    name = args[0].decode().lower()
    if name in CONTAINERS and len(args) > 1:
        return f"{name}|{args[1].decode().lower()}"
    return name


def unpack(chunks: Iterable[bytes | memoryview] | bytes | str) -> list[list[bytes]]:
    """The commands in what redis-py packed for one send (RESP arrays of bulk strings)."""
    if isinstance(chunks, str):
        chunks = chunks.encode()
    data = chunks if isinstance(chunks, bytes) else b"".join(bytes(chunk) for chunk in chunks)
    commands, at = [], 0
    while at < len(data):
        end = data.index(b"\r\n", at)
        assert data[at:at + 1] == b"*", f"not a RESP array at byte {at}"
        count, at = int(data[at + 1:end]), end + 2
        args = []
        for _ in range(count):
            end = data.index(b"\r\n", at)
            length, at = int(data[at + 1:end]), end + 2
            args.append(data[at:at + length])
            at += length + 2
        commands.append(args)
    return commands


@dataclass
class Send:
    """One round trip: the commands of one ``send_packed_command``, who sent them, on which local port."""

    part: str | None
    port: int
    commands: list[list[bytes]]


@dataclass
class Sends:
    """Every send of every redis-py connection in this process while ``recording``."""

    recording: bool = False
    sends: list[Send] = field(default_factory=list)

    def record(self, connection: AbstractConnection, packed: Any) -> None:
        if self.recording and not _OWN.get():
            writer = getattr(connection, "_writer", None)
            port = writer.get_extra_info("sockname")[1] if writer is not None else 0
            self.sends.append(Send(PART.get(), port, unpack(packed)))


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> Sends:
    """Wrap redis-py's connection so every send is recorded; a connection's own sends run with ``_OWN`` set."""
    recorded = Sends()
    send = AbstractConnection.send_packed_command
    connect = AbstractConnection.connect_check_health

    async def counted_send(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        own = _OWN.set(True)          # a reconnect or a health-check PING inside this send is the connection's
        try:
            await send(self, command, check_health)
        finally:
            _OWN.reset(own)
        recorded.record(self, command)

    async def own_connect(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        own = _OWN.set(True)
        try:
            await connect(self, *args, **kwargs)
        finally:
            _OWN.reset(own)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted_send)
    monkeypatch.setattr(AbstractConnection, "connect_check_health", own_connect)
    return recorded


@web.middleware
async def tag_request(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                      ) -> web.StreamResponse:
    token = PART.set("webhook" if request.path == "/twilio/sms" else "api")
    try:
        return await handler(request)
    finally:
        PART.reset(token)


@asynccontextmanager
async def turns_tagged() -> AsyncIterator[set[asyncio.Task[Any]]]:
    """Run each conversation task the workers start with ``PART`` = turn; yield the set of those tasks."""
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    started: set[asyncio.Task[Any]] = set()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, /, **kwargs: Any) -> asyncio.Task[Any]:
        if getattr(coro, "__qualname__", "") == TURN_TASK:
            context = kwargs.pop("context", None) or contextvars.copy_context()
            context.run(PART.set, "turn")
            task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context, **kwargs)
            started.add(task)
            return task
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        yield started
    finally:
        loop.set_task_factory(previous)


_LINE = re.compile(r'^\+?[\d.]+ \[\d+ ([^\]]+)\] (.*)$')
_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass
class Script:
    """An ``EVALSHA`` as ``MONITOR`` saw it: the port it came from, the script, the commands it ran."""

    port: int
    sha: str
    inner: list[str] = field(default_factory=list)


class Monitor:
    """``MONITOR`` on its own connection: every script run, with its inner commands, until a marker."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 6379
        self.scripts: list[Script] = []
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Monitor:
        self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        self._writer.write(b"MONITOR\r\n")
        await self._writer.drain()
        assert await asyncio.wait_for(self._reader.readline(), 5) == b"+OK\r\n"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._writer is not None
        self._writer.close()

    async def read_until(self, marker: str, within_s: float = 10.0) -> None:
        """Read what Redis ran until it ran ``ECHO marker`` (sent once everything counted had been answered)."""
        assert self._reader is not None
        running: Script | None = None     # the script whose inner commands the next ``lua`` lines are
        async with asyncio.timeout(within_s):
            while line := (await self._reader.readline()).decode(errors="replace"):
                found = _LINE.match(line.rstrip("\r\n"))
                if found is None:
                    continue
                source, args = found.group(1), _ARG.findall(found.group(2))
                if source == "lua":
                    assert running is not None, f"a command run by a script MONITOR did not see start: {line}"
                    running.inner.append(command_name([arg.encode() for arg in args]))
                elif args[0].lower() in SCRIPTS:
                    running = Script(int(source.rsplit(":", 1)[1]), args[1])
                    self.scripts.append(running)
                elif args[0].lower() == "echo" and args[1:] == [marker]:
                    return
                else:
                    running = None
        raise AssertionError("MONITOR closed before the marker")


@dataclass
class Cost:
    """What one text cost: its round trips, each with its commands, and every command Redis ran for it."""

    round_trips: Counter[str] = field(default_factory=Counter)     # by part
    sent: Counter[str] = field(default_factory=Counter)
    in_lua: Counter[str] = field(default_factory=Counter)
    trips: list[str] = field(default_factory=list)                 # "part: command command[inner ...] ..."

    @property
    def commands(self) -> int:
        return sum(self.sent.values()) + sum(self.in_lua.values())

    def breakdown(self) -> str:
        by_command = [f"{name}: {self.sent[name]} sent + {self.in_lua[name]} in Lua"
                      for name in sorted(self.sent | self.in_lua, key=lambda n: (-self.sent[n] - self.in_lua[n], n))]
        return "\n  ".join([f"{self.commands} commands ({sum(self.sent.values())} sent, {sum(self.in_lua.values())} "
                            f"inside Lua), by command:", *by_command, f"{len(self.trips)} round trips, in order:",
                            *self.trips])


def cost_of(sends: list[Send], scripts: list[Script]) -> Cost:
    """The counted parts' cost: each send, with each script it ran given the inner commands ``MONITOR`` saw."""
    ran: dict[tuple[int, str], deque[Script]] = defaultdict(deque)
    for script in scripts:
        ran[(script.port, script.sha)].append(script)
    sent: dict[tuple[int, str], list[str | None]] = defaultdict(list)
    for send in sends:
        for args in send.commands:
            if command_name(args) in SCRIPTS:
                sent[(send.port, args[1].decode())].append(send.part)
    for (port, sha), parts in sent.items():
        assert not any(parts) or len(ran[(port, sha)]) == len(parts), (
            f"script {sha[:12]} on port {port}: Parley sent it {len(parts)} times, MONITOR saw {len(ran[(port, sha)])} "
            f"runs: cannot tell which run was which")
    cost = Cost()
    for send in sends:
        names = []
        for args in send.commands:
            name = command_name(args)
            if name in SCRIPTS and any(sent[(send.port, args[1].decode())]):
                inner = ran[(send.port, args[1].decode())].popleft().inner
                if send.part is not None:
                    cost.in_lua.update(inner)
                    name += f"[{' '.join(inner)}]"
            names.append(name)
        if send.part is not None:
            cost.round_trips[send.part] += 1
            cost.sent.update(command_name(args) for args in send.commands)
            cost.trips.append(f"{send.part}: {' '.join(names)}")
    return cost


@pytest.fixture
async def start_counted(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path, fake_twilio: FakeTwilio, fake_llm: FakeOpenAI,
    aiohttp_client: Any, sends: Sends,
) -> Callable[[int], Awaitable[Parley]]:
    """Start Parley with the default agent and its requests tagged (``tag_request``)."""
    if is_cluster(redis_url):
        pytest.skip("on Redis Cluster a text's commands are split by node (a reader per partition, pipelines per "
                    "slot): the budget is for a single server, the layout the benchmark measures")

    async def start(catalog_cache_ms: int) -> Parley:
        write_agents(tmp_path / "agents", {"frontdesk": agent_file()}, DEFAULT_NUMBERS)
        settings = build_settings(redis_url, tmp_path / "agents", fake_twilio, fake_llm,
                                  catalog_cache_ms=catalog_cache_ms, reclaim_idle_ms=60_000)
        app = create_app(settings)
        app.middlewares.insert(0, tag_request)
        client = await aiohttp_client(app)
        return Parley(client=client, twilio=fake_twilio, llm=fake_llm, redis=redis, settings=settings)

    return start


class Meter:
    """Runs a move against Parley inside a counting window; what it cost."""

    def __init__(self, parley: Parley, sends: Sends, turns: set[asyncio.Task[Any]], url: str) -> None:
        self._parley, self._sends, self._turns, self._url = parley, sends, turns, url
        self._windows = 0

    async def text(self, user: str, body: str) -> Cost:
        """Text Parley; once the reply has been sent and its turn has ended, what the text cost."""
        async def move() -> None:
            twilio = self._parley.twilio
            before = len(twilio.messages)
            assert (await self._parley.text(body, user=user)).status == 200
            await twilio.wait_for(before + 1)
        return await self.window(move, turns=1)

    async def api_message(self, chat_id: str, content: str) -> Cost:
        """Send a message to an API chat (``POST /create-chat-completion``); what it cost."""
        async def move() -> None:
            response = await self._parley.api("POST", "/create-chat-completion",
                                              json={"chat_id": chat_id, "content": content})
            assert response.status == 201, await response.text()
        return await self.window(move, turns=0)

    async def window(self, move: Callable[[], Awaitable[None]], *, turns: int) -> Cost:
        """Count ``move``: from ``MONITOR`` running until its turns (``turns`` of them) ended and a marker,
        sent after, has come back."""
        self._windows += 1
        marker = f"redis-budget-{self._windows}"
        async with Monitor(self._url) as monitor:
            self._turns.clear()
            self._sends.sends.clear()
            self._sends.recording = True
            await move()
            if self._turns:
                await asyncio.wait(set(self._turns))
            self._sends.recording = False
            assert len(self._turns) == turns, f"{len(self._turns)} turns ran, not {turns}"
            await self._parley.redis.echo(marker)
            await monitor.read_until(marker)
        return cost_of(self._sends.sends, monitor.scripts)


def off_budget(catalog: str, name: str, cost: Cost) -> list[str]:
    """How ``cost`` differs from its budget: grown (a regression), or shrunk (lower the budget)."""
    budget = BUDGETS[catalog][name]
    allowed = {"commands": budget.commands, "request round trips": budget.request_round_trips,
               "turn round trips": budget.turn_round_trips}
    measured = {"commands": cost.commands, "request round trips": cost.round_trips["webhook"] + cost.round_trips["api"],
                "turn round trips": cost.round_trips["turn"]}
    grew = [f"{what} grew from {allowed[what]} to {n}" for what, n in measured.items() if n > allowed[what]]
    fell = [f"{what} fell from {allowed[what]} to {n}: lower BUDGETS[{catalog!r}][{name!r}] to lock the cut in"
            for what, n in measured.items() if n < allowed[what]]
    return [f"{name}, {catalog}: {'; '.join(grew + fell)}\n  {cost.breakdown()}"] if grew or fell else []


@pytest.mark.parametrize("catalog", list(BUDGETS))
async def test_a_text_costs_no_more_redis_commands_or_round_trips_than_its_budget(
    start_counted: Callable[[int], Awaitable[Parley]], sends: Sends, redis_url: str, catalog: str,
) -> None:
    parley = await start_counted(CATALOG_CACHE_MS[catalog])
    async with turns_tagged() as turns:
        meter = Meter(parley, sends, turns, redis_url)
        # A warm-up conversation and API chat: the scripts loaded, the connections open, the caches filled.
        await meter.text("+14155550001", "hello")
        await meter.text("+14155550001", "and again")
        chat = await parley.api("POST", "/create-chat", json={"agent_id": "frontdesk"})
        chat_id = (await chat.json())["chat_id"]
        await meter.api_message(chat_id, "hello")
        costs = {"first text": await meter.text("+14155550002", "hello"),
                 "follow-up": await meter.text("+14155550002", "and again"),
                 "api message": await meter.api_message(chat_id, "and again")}
    problems = [problem for name, cost in costs.items() for problem in off_budget(catalog, name, cost)]
    assert not problems, "\n".join(problems)
