"""``parley serve`` with several processes, as real processes: a supervisor, one web child and worker children
answer every text once, name themselves in their log lines, are restarted when killed or when their event loop
stops, drain on SIGTERM, give up on a crash loop, and share one embedded Valkey."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import unused_port

from service.cli import supervisor
from service.storage import keys

from .conftest import API_KEY, redis_env
from .fakes.openai import FakeOpenAI
from .fakes.twilio import FakeTwilio
from .test_processes import REPO, Process, echo_new_texts, process_env, settled, text

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads a process's children in /proc")


def children(pid: int) -> dict[str, int]:
    """A supervisor's children by name: ``PARLEY_PROCESS_NAME``, or ``valkey`` for the embedded server (started
    by a thread of the supervisor's, so listed under that thread)."""
    named: dict[str, int] = {}
    listed = " ".join(task.read_text() for task in Path(f"/proc/{pid}/task").glob("*/children"))
    for child in map(int, listed.split()):
        try:
            if b"valkey-server" in Path(f"/proc/{child}/cmdline").read_bytes():   # not a Python child
                named["valkey"] = child
            elif name := environ(child).get("PARLEY_PROCESS_NAME"):
                named[name] = child
        except (FileNotFoundError, ProcessLookupError):   # it exited meanwhile
            continue
    return named


def environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


def log_lines(log: Path) -> list[dict[str, Any]]:
    """The JSON lines of a supervisor's stderr (its own and its children's), each checked whole."""
    lines = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))      # a line two processes wrote into at once would not parse
        else:
            assert line.startswith(("======== Running on", "PARLEY_API_KEY is not set")), line
    return lines


async def logged(log: Path, event: str, within_s: float = 30.0, **fields: Any) -> dict[str, Any]:
    async with asyncio.timeout(within_s):
        while True:
            for line in log_lines(log):
                if line["event"] == event and fields.items() <= line.items():
                    return line
            await asyncio.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


@pytest.fixture
async def supervise(
    redis: Any, redis_url: str, tmp_path: Path, fake_twilio: FakeTwilio, fake_llm: FakeOpenAI,
) -> AsyncIterator[Callable[..., Any]]:
    base = {**process_env(tmp_path, fake_twilio, fake_llm), **redis_env(redis_url), "PARLEY_LOCK_TTL_MS": "30000"}
    started: list[Process] = []

    async def start(processes: int, **env: str) -> Process:
        process = Process({**base, "PARLEY_PROCESSES": str(processes), **env}, tmp_path / f"serve-{len(started)}.log")
        started.append(process)
        return await process.start()

    yield start
    for process in started:
        if process.proc is not None and process.proc.returncode is None:
            await process.stop(signal.SIGKILL)


async def test_a_web_child_and_worker_children_answer_a_burst_once_per_text_in_order(
    supervise: Callable[..., Any], fake_twilio: FakeTwilio, fake_llm: FakeOpenAI, redis: Any,
) -> None:
    fake_llm.respond = echo_new_texts
    fake_llm.delay_s = 0.05
    serve = await supervise(3, PARLEY_LOG_LEVEL="INFO")
    assert serve.proc is not None
    named = children(serve.proc.pid)
    assert set(named) == {"web", "worker-1", "worker-2"}
    users = [f"+1415555{n:04d}" for n in range(30)]
    async with aiohttp.ClientSession() as http:
        for round_ in range(3):
            statuses = await asyncio.gather(*(
                text(http, serve, user, f"{user[-4:]}-{round_}", f"SM{i:016d}{round_:016d}")
                for i, user in enumerate(users)))
            assert set(statuses) == {200}
            await asyncio.sleep(0.02)
        answered = 0
        while answered < 3 * len(users):
            await fake_twilio.wait_for(len(fake_twilio.messages) + 1, within_s=30)
            answered = sum(r.count("|") + 1 for u in users for r in fake_twilio.to(u))
    await settled(redis)
    for user in users:
        replies = " | ".join(fake_twilio.to(user)).split(" | ")
        assert replies == [f"{user[-4:]}-{r}" for r in range(3)], f"{user}: {fake_twilio.to(user)}"
    # Only worker children ran turns (a consumer is named <host>-<pid>-<random>): the web child never did.
    readers = {consumer["name"].rsplit("-", 2)[1] for s in range(keys.SHARDS)
               for consumer in await redis.xinfo_consumers(keys.wakeups(s), keys.WORKER_GROUP)}
    assert readers <= {str(named["worker-1"]), str(named["worker-2"])} and readers
    assert await serve.stop() == 0
    writers = {line.get("process") for line in log_lines(serve.log)}
    assert writers == {"supervisor", "web", "worker-1", "worker-2"}


async def test_a_killed_worker_child_is_restarted_and_its_texts_answered(
    supervise: Callable[..., Any], fake_twilio: FakeTwilio, fake_llm: FakeOpenAI, redis: Any,
) -> None:
    fake_llm.delay_s = 0.5
    serve = await supervise(2, PARLEY_LOCK_TTL_MS="2000")   # the only worker child is killed
    assert serve.proc is not None
    doomed = children(serve.proc.pid)["worker-1"]
    async with aiohttp.ClientSession() as http:
        for n in range(6):
            assert await text(http, serve, f"+1415555{n:04d}", "hello", f"SMkill{n:028d}") == 200
        await fake_llm.called.wait()
        os.kill(doomed, signal.SIGKILL)
        line = await logged(serve.log, "child exited: restarting it", child="worker-1")
        assert line["pid"] == doomed and line["signal"] == "SIGKILL" and line["process"] == "supervisor"
        await fake_twilio.wait_for(6, within_s=30)
        await settled(redis)
        assert sorted(m.to for m in fake_twilio.messages) == [f"+1415555{n:04d}" for n in range(6)]
        async with asyncio.timeout(30):
            while children(serve.proc.pid).get("worker-1") in (None, doomed):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert await text(http, serve, "+14155550099", "again", "SMkill" + "9" * 28) == 200
        await fake_twilio.wait_for(7, within_s=30)
    assert await serve.stop() == 0


async def test_a_child_whose_event_loop_stops_is_killed_and_restarted(
    supervise: Callable[..., Any], fake_twilio: FakeTwilio,
) -> None:
    serve = await supervise(2, PARLEY_HANG_TIMEOUT_S="2")
    assert serve.proc is not None
    named = children(serve.proc.pid)
    stuck = named["worker-1"]
    async with aiohttp.ClientSession() as http:   # a reply: the worker's event loop runs (and beats)
        assert await text(http, serve, "+14155550041", "hello", "SMhang" + "1" * 28) == 200
        await fake_twilio.wait_for(1, within_s=30)
    os.kill(stuck, signal.SIGSTOP)   # its event loop runs no more, as if a call had never returned
    line = await logged(serve.log, "child unresponsive: killed", child="worker-1")
    assert line["pid"] == stuck and line["silent_s"] >= 2 and line["process"] == "supervisor"
    line = await logged(serve.log, "child exited: restarting it", child="worker-1")
    assert line["pid"] == stuck and line["signal"] == "SIGKILL"
    async with asyncio.timeout(30):
        while children(serve.proc.pid).get("worker-1") in (None, stuck):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    async with aiohttp.ClientSession() as http:   # the new worker answers
        assert await text(http, serve, "+14155550042", "still there?", "SMhang" + "0" * 28) == 200
        await fake_twilio.wait_for(2, within_s=30)
    # The web child, whose loop kept running, was left alone all along.
    assert children(serve.proc.pid)["web"] == named["web"]
    assert not [e for e in log_lines(serve.log) if e["event"] == "child unresponsive: killed" and e["child"] == "web"]
    assert await serve.stop() == 0


async def test_sigterm_drains_every_child_and_the_supervisor_exits_0(
    supervise: Callable[..., Any], fake_twilio: FakeTwilio, fake_llm: FakeOpenAI,
) -> None:
    fake_llm.delay_s = 1.0
    serve = await supervise(2)
    assert serve.proc is not None
    named = children(serve.proc.pid)
    async with aiohttp.ClientSession() as http:
        assert await text(http, serve, "+14155550001", "hello", "SMterm0000000000000000000000000001") == 200
        await fake_llm.called.wait()
    # As systemd stops a unit: SIGTERM to every process at once, so each child hears it twice (from systemd, and
    # from the supervisor); the second must not cut its drain short.
    for pid in named.values():
        os.kill(pid, signal.SIGTERM)
    assert await serve.stop(signal.SIGTERM) == 0
    assert [m.body for m in fake_twilio.messages] == ["You said: hello"]
    assert not any(alive(pid) for pid in named.values())


async def test_children_that_keep_dying_stop_the_supervisor_with_status_1(
    redis: Any, redis_url: str, tmp_path: Path, fake_twilio: FakeTwilio, fake_llm: FakeOpenAI,
) -> None:
    env = {**process_env(tmp_path, fake_twilio, fake_llm), **redis_env(redis_url), "PARLEY_PROCESSES": "2",
           "PARLEY_PORT": str(unused_port())}
    log = tmp_path / "serve.log"
    with log.open("ab") as stderr:
        serve = await asyncio.create_subprocess_exec(sys.executable, "-m", "service", "serve", cwd=REPO, env=env,
                                                     stdout=asyncio.subprocess.DEVNULL, stderr=stderr)
    killed: set[int] = set()
    try:
        async with asyncio.timeout(60):
            while serve.returncode is None:
                with suppress(FileNotFoundError):   # the supervisor is gone
                    worker = children(serve.pid).get("worker-1")
                if worker is not None and worker not in killed:
                    os.kill(worker, signal.SIGKILL)
                    killed.add(worker)
                await asyncio.sleep(0.05)
    finally:
        if serve.returncode is None:
            serve.kill()
    assert await serve.wait() == 1
    assert len(killed) == 6   # five restarts, then the sixth death within the minute stops it
    line = await logged(log, "children keep dying: stopping the others and exiting 1")
    assert line["child"] == "worker-1" and line["deaths"] == 6


async def test_the_embedded_valkey_is_started_once_and_shared(
    tmp_path: Path, fake_twilio: FakeTwilio, fake_llm: FakeOpenAI,
) -> None:
    env = {k: v for k, v in process_env(tmp_path, fake_twilio, fake_llm).items() if k != "PARLEY_API_KEY"}
    env.update({"PARLEY_DATA_DIR": str(tmp_path / "var"), "PARLEY_PROCESSES": "2", "PARLEY_LOG_LEVEL": "INFO"})
    serve = Process(env, tmp_path / "serve.log")
    await serve.start()
    try:
        assert serve.proc is not None
        named = children(serve.proc.pid)
        assert set(named) == {"valkey", "web", "worker-1"}   # one server, the supervisor's child
        started = [line for line in log_lines(serve.log) if line["event"] == "embedded valkey started"]
        assert [line["process"] for line in started] == ["supervisor"]
        assert {environ(named[n])["REDIS_URL"] for n in ("web", "worker-1")} == {
            f"redis://127.0.0.1:{started[0]['port']}"}
        key = serve.log.read_text().split("this run's API key is: ")[1].split()[0]   # made up once, for all
        assert {environ(named[n])["PARLEY_API_KEY"] for n in ("web", "worker-1")} == {key}
        async with aiohttp.ClientSession() as http:
            assert await text(http, serve, "+14155550001", "hello", "SMvalkey00000000000000000000000001") == 200
            async with http.get(f"http://127.0.0.1:{serve.port}/list-chat-agents",
                                headers={"Authorization": f"Bearer {key}"}) as response:
                assert response.status == 200
        sent = await fake_twilio.wait_for(1, within_s=30)   # a worker child ran the turn the web child queued
        assert sent[0].body == "You said: hello"
    finally:
        status = await serve.stop()
    assert status == 0
    assert not alive(named["valkey"])
    assert log_lines(serve.log)[-2]["event"] == "embedded valkey stopped"   # after every child exited


def test_a_bad_agent_file_fails_in_the_supervisor_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "broken.yaml").write_text("agent_name: [unclosed\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "PARLEY_"))}
    env.update({"PARLEY_AGENTS_DIR": str(tmp_path / "agents"), "PARLEY_DATA_DIR": str(tmp_path / "var"),
                "PARLEY_API_KEY": API_KEY, "PARLEY_PORT": str(unused_port())})
    done = subprocess.run([sys.executable, "-m", "service", "serve", "--processes", "3"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "broken.yaml" in done.stderr, done.stderr
    assert "child started" not in done.stderr
    assert not (tmp_path / "var" / "valkey").exists(), "it started Valkey before refusing"


def test_the_supervisor_loads_none_of_the_app() -> None:
    # `parley serve` runs no turn and serves no request itself: what it imports it holds for nothing (about 55 MB of
    # the app's modules). Its check of the agent files runs in a forked process for the same reason.
    probe = ("import sys; from service.cli import commands, supervisor; "
             "print(' '.join(sorted(m for m in sys.modules if m.startswith('service'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                            check=True).stdout.split()
    assert "service.cli.supervisor" in loaded
    assert not {"service.app", "service.conversations.runtime", "service.catalog.agent_files",
                "service.api.auth"} & set(loaded), loaded


def test_serve_runs_as_many_processes_as_cores_by_default() -> None:
    # the web child and a worker child per other core; one core, one process (no supervisor)
    assert [supervisor.default_processes(cores) for cores in (1, 2, 4, 16)] == [1, 2, 4, 16]
    assert supervisor.default_processes() == supervisor.usable_cores()
