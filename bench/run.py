"""Parley's benchmark: ``.venv/bin/python -m bench.run [--quick]`` from the repository root.

Starts, as separate processes on 127.0.0.1: a redis-server of its own (and a second one for the floor), the
fake Twilio and fake OpenAI of ``tests/fakes`` (``bench/fake_twilio.py``, ``bench/fake_openai.py``), Parley
(``python -m service serve``; with ``--layout split``, ``serve --web-only`` and ``--worker-procs`` x
``python -m service worker``) and the floor (``bench/floor.py``). Then it sends signed Twilio webhooks and
measures webhook acknowledgement latency, turns per second against the floor, reply latency and memory
with a slow LLM, and Redis commands per inbound message. It prints one table and writes
``bench/results.json``. Every process is stopped on exit, Ctrl-C included. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import redis.asyncio as aioredis
import yaml

from service.channels.twilio.signature import sign
from service.storage import keys

from . import flow as flow_bench
from .procs import (
    ROOT,
    Procs,
    cpu_seconds,
    free_port,
    machine_busy_seconds,
    memory_kb,
    python_module,
    start_redis,
    wait_consumers,
    wait_http,
)

ACCOUNT_SID = "AC" + "be" * 16
AUTH_TOKEN = "bench-auth-token"
API_KEY = "bench-api-key"
PUBLIC_URL = "http://bench.local"
AGENT_NUMBER = "+15035550100"
HOOK_PATH = "/twilio/sms"
OUT = ROOT / "bench" / "results.json"

# User numbers by phase (+1415NNNNNNN): each phase (and each turns run) has its own conversations.
ACK_USERS, ACK_LOW_USERS, SLOW_USERS, TURN_USERS = 1_000_000, 1_500_000, 2_000_000, 3_000_000
TURN_RUN_STRIDE = 100_000

TARGETS = {
    "ack_p99_ms": "< 20 ms at 200 req/s",
    "turns_ratio": ">= 0.5 x floor",
    "slow_all_answered": "all answered (1.5 s LLM)",
    "slow_reply_p99_ms": "< 1.5 s + burst window + 250 ms",
    "slow_rss_mb": "< 300 MB peak RSS (per process)",
    "redis_cmds_per_msg": "<= 20 per inbound message",
    "flow_cpu_ratio": flow_bench.TARGET,
}


@dataclass(frozen=True)
class Plan:
    """How much load each phase offers, and how Parley runs. ``--quick`` scales the load down."""

    ack_rate: float = 200.0           # phase 1: webhooks per second, open loop, one conversation per text
    ack_seconds: float = 15.0
    ack_low_rate: float = 40.0        # phase 1 again, for comparison only, below Parley's capacity
    ack_low_seconds: float = 10.0
    turns_conversations: int = 500    # phase 2: K conversations; each round sends one text to each
    turns_rounds: int = 4             # timed rounds after one warm-up round: M = K x rounds turns
    repeats: int = 3                  # floor and Parley runs, alternating; medians reported
    slow_llm_s: float = 1.5           # phase 3
    slow_conversations: int = 3_000
    slow_rate: float = 200.0
    slow_seconds: float = 20.0
    count_messages: int = 300         # phase 4: plain turns counted in Redis
    workers: int = 512                # PARLEY_WORKERS, per process that runs workers (and the floor's)
    burst_window_ms: int = 0
    layout: str = "single"            # "single": one `serve`; "split": one `serve --web-only` + `worker` processes
    worker_procs: int = 0             # the `worker` processes of the split layout (0: single)


QUICK = Plan(ack_seconds=5.0, ack_low_seconds=4.0, turns_conversations=200, turns_rounds=2,
             slow_conversations=1_000, slow_seconds=6.0, count_messages=150)


def wakeup_streams() -> list[str]:
    """Parley's wake-up streams: one (``keys.WAKEUPS``) or, sharded, ``keys.wakeups(shard)`` for each shard."""
    if hasattr(keys, "wakeups"):
        return [keys.wakeups(shard) for shard in range(keys.SHARDS)]
    return [vars(keys)["WAKEUPS"]]    # only a Parley from before the sharding has it


def user_number(n: int) -> str:
    return f"+1415{n:07d}"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


# --------------------------------------------------------------------------------------------- the setup


@dataclass
class Setup:
    """Where everything runs."""

    work_dir: Path
    procs: Procs
    redis_port: int = 0
    floor_redis_port: int = 0
    twilio_url: str = ""
    llm_url: str = ""
    parley_url: str = ""              # the process that takes the webhooks
    floor_url: str = ""
    parley: dict[str, str] = field(default_factory=dict)     # every Parley process: name -> its base URL
    parley_workers: list[str] = field(default_factory=list)  # the Parley processes that run workers


def write_agents(directory: Path, plan: Plan, flow: bool = False) -> None:
    """One agent (no burst window) and one number, as ``tests/conftest.py`` writes them; with ``flow``, also the
    conversation-flow agent of ``bench/flow.py`` on a number of its own."""
    directory.mkdir()
    agent = {"agent_name": "Bench", "burst_window_ms": plan.burst_window_ms, "end_chat_after_silence_ms": 3_600_000,
             "retell_llm": {"model": "gpt-test",
                            "general_prompt": "You are the front desk. The user is {{user_number}}.",
                            "general_tools": [{"type": "end_call", "name": "end_chat",
                                               "description": "End the chat."}]}}
    number = {"phone_number": AGENT_NUMBER, "nickname": "Bench",
              "inbound_sms_agents": [{"agent_id": "bench", "weight": 1}],
              "daily_segment_limit": 100_000_000}   # the default 6,000 a day would refuse the bench's replies
    (directory / "bench.yaml").write_text(yaml.safe_dump(agent))
    numbers = [number]
    if flow:
        (directory / f"{flow_bench.FLOW_AGENT_ID}.yaml").write_text(
            yaml.safe_dump(flow_bench.flow_agent(plan.burst_window_ms)))
        numbers.append(flow_bench.flow_number())
    (directory / "phone-numbers.yaml").write_text(yaml.safe_dump(numbers))


def parley_env(setup: Setup, plan: Plan, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PARLEY_", "TWILIO_", "OPENAI_", "REDIS_"))}
    env.update({
        "REDIS_URL": f"redis://127.0.0.1:{setup.redis_port}/0",
        "PARLEY_HOST": "127.0.0.1", "PARLEY_PORT": str(port), "PARLEY_PUBLIC_URL": PUBLIC_URL,
        "PARLEY_API_KEY": API_KEY, "PARLEY_AGENTS_DIR": str(setup.work_dir / "agents"),
        "PARLEY_DATA_DIR": str(setup.work_dir / "var"), "PARLEY_LOG_LEVEL": "WARNING",
        "PARLEY_WORKERS": str(plan.workers), "PARLEY_DRAIN_TIMEOUT_S": "2",
        "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": setup.llm_url,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_API_BASE_URL": setup.twilio_url,
    })
    return env


def start_parley(setup: Setup, plan: Plan, cpus: set[int] | None) -> None:
    """``single``: ``parley``, one ``serve`` (webhooks and workers). ``split``: ``parley-web``, one
    ``serve --web-only``, and ``parley-worker-1``..N, ``worker`` processes (each serves its health checks on a
    port of its own). Not waited for."""
    layout = [("parley", ["serve"])] if plan.layout == "single" else [
        ("parley-web", ["serve", "--web-only"]),
        *((f"parley-worker-{i}", ["worker"]) for i in range(1, plan.worker_procs + 1))]
    for name, command in layout:
        port = free_port()
        setup.procs.start(name, python_module("service", *command), env=parley_env(setup, plan, port), cpus=cpus)
        setup.parley[name] = f"http://127.0.0.1:{port}"
    setup.parley_url = setup.parley[layout[0][0]]
    setup.parley_workers = [name for name, command in layout if command != ["serve", "--web-only"]]


def wait_parley(setup: Setup) -> None:
    """Every Parley process answers ``/readyz`` (Redis answers, the agents are published), and each one that
    runs workers has joined the wake-up stream's consumer group (its first ``XREADGROUP``), so no phase starts
    while a worker is still starting. Each wait is bounded and fails early if a process died."""
    for name, url in setup.parley.items():
        wait_http(setup.procs, name, url + "/readyz")
    wait_consumers(setup.procs, setup.parley_workers, setup.redis_port, wakeup_streams(), keys.WORKER_GROUP)


def start_all(setup: Setup, plan: Plan, pin: bool, flow: bool = False) -> None:
    """redis x2, fake Twilio, fake OpenAI, Parley (one process or several), floor. With ``pin``: Parley (every
    process of it) and the floor on CPU 0, the rest on the other CPUs. With ``flow``: the flow agent too."""
    procs = setup.procs
    cpus = sorted(os.sched_getaffinity(0))
    app_cpus = {cpus[0]} if pin and len(cpus) > 1 else None
    rest = set(cpus[1:]) if app_cpus else None
    if rest:
        os.sched_setaffinity(0, rest)
    setup.redis_port = start_redis(procs, "redis", setup.work_dir, rest)
    setup.floor_redis_port = start_redis(procs, "redis-floor", setup.work_dir, rest)
    twilio_port, llm_port, floor_port = (free_port() for _ in range(3))
    procs.start("fake-twilio", python_module("bench.fake_twilio", "--port", str(twilio_port),
                                             "--account", f"{ACCOUNT_SID}:{AUTH_TOKEN}"), cpus=rest)
    procs.start("fake-openai", python_module("bench.fake_openai", "--port", str(llm_port)), cpus=rest)
    setup.twilio_url, setup.llm_url = f"http://127.0.0.1:{twilio_port}", f"http://127.0.0.1:{llm_port}/v1"
    wait_http(procs, "fake-twilio", setup.twilio_url + "/stats")
    wait_http(procs, "fake-openai", f"http://127.0.0.1:{llm_port}/stats")
    write_agents(setup.work_dir / "agents", plan, flow)
    start_parley(setup, plan, app_cpus)
    procs.start("floor", python_module(
        "bench.floor", "--port", str(floor_port), "--redis-url", f"redis://127.0.0.1:{setup.floor_redis_port}/0",
        "--llm-url", setup.llm_url, "--twilio-url", setup.twilio_url, "--account-sid", ACCOUNT_SID,
        "--auth-token", AUTH_TOKEN, "--workers", str(plan.workers)), cpus=app_cpus)
    setup.floor_url = f"http://127.0.0.1:{floor_port}"
    wait_parley(setup)
    wait_http(procs, "floor", setup.floor_url + "/readyz")
    parley = ", ".join(f"{name} pid {procs.pid(name)}" for name in setup.parley)
    print(f"started ({plan.layout} layout): {parley}, webhooks at {setup.parley_url}; floor pid {procs.pid('floor')}; "
          f"logs in {setup.work_dir}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- the load


@dataclass(slots=True)
class Shot:
    """One webhook sent: to whom, when (wall clock), how long the answer took, its status (0: no answer)."""

    user: str
    wall: float = 0.0
    latency_s: float = 0.0
    status: int = 0
    lag_s: float = 0.0      # how late the driver sent it against its schedule (open loop)


Prepared = tuple[str, bytes, dict[str, str]]


class Driver:
    """Sends inbound webhooks the way Twilio does (signed form POSTs), and reads the fakes' counters."""

    def __init__(self, session: aiohttp.ClientSession, setup: Setup) -> None:
        self.session = session
        self.setup = setup
        self.seq = 0
        self.url = PUBLIC_URL + HOOK_PATH

    def prepare(self, user: str, body: str, to: str = AGENT_NUMBER) -> Prepared:
        self.seq += 1
        sid = f"SM{os.getpid():08x}{self.seq:024x}"
        form = {"ToCountry": "US", "ToState": "OR", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "PORTLAND",
                "FromZip": "94105", "SmsSid": sid, "FromState": "CA", "SmsStatus": "received",
                "FromCity": "SAN FRANCISCO", "Body": body, "FromCountry": "US", "To": to,
                "ToZip": "97201", "NumSegments": "1", "MessageSid": sid, "AccountSid": ACCOUNT_SID, "From": user,
                "ApiVersion": "2010-04-01"}
        headers = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "TwilioProxy/1.1",
                   "X-Twilio-Signature": sign(self.url, form, AUTH_TOKEN)}
        return user, urlencode(form).encode(), headers

    async def post(self, base: str, prepared: Prepared, shot: Shot) -> Shot:
        _, data, headers = prepared
        shot.wall = time.time()
        start = time.perf_counter()
        try:
            async with self.session.post(base + HOOK_PATH, data=data, headers=headers) as response:
                await response.read()
                shot.status = response.status
        except (aiohttp.ClientError, TimeoutError):
            shot.status = 0
        shot.latency_s = time.perf_counter() - start
        return shot

    async def open_loop(self, base: str, batch: list[Prepared], rate: float) -> list[Shot]:
        """Send ``batch`` at ``rate`` per second whatever the answers do; wait (bounded) for the answers."""
        tasks = []
        start = time.perf_counter()
        for i, prepared in enumerate(batch):
            due = start + i / rate
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            shot = Shot(prepared[0], lag_s=max(0.0, time.perf_counter() - due))
            tasks.append(asyncio.create_task(self.post(base, prepared, shot)))
        await asyncio.wait(tasks, timeout=30)
        return [task.result() if task.done() else Shot(p[0]) for task, p in zip(tasks, batch, strict=True)]

    async def flood(self, base: str, batch: list[Prepared], concurrency: int = 64) -> list[Shot]:
        """Send ``batch`` as fast as ``concurrency`` requests at a time allow."""
        slots = asyncio.Semaphore(concurrency)

        async def one(prepared: Prepared) -> Shot:
            async with slots:
                return await self.post(base, prepared, Shot(prepared[0]))

        return await asyncio.wait_for(asyncio.gather(*(one(p) for p in batch)), timeout=120)

    async def json(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        async with self.session.request(method, url, json=body, timeout=aiohttp.ClientTimeout(total=10)) as r:
            r.raise_for_status()
            return await r.json()

    async def replies(self) -> int:
        return int((await self.json("GET", self.setup.twilio_url + "/stats"))["count"])

    async def reset_fakes(self) -> None:
        await self.json("POST", self.setup.twilio_url + "/reset")
        await self.json("POST", self.llm_base() + "/reset")

    def llm_base(self) -> str:
        return self.setup.llm_url.removesuffix("/v1")

    async def wait_replies(self, count: int, within_s: float, settle_s: float | None = None) -> tuple[bool, int, float]:
        """Wait (polling, bounded) until the fake Twilio received ``count`` messages, or (``settle_s``) until
        the count stopped moving for that long; (reached, seen, when the last one arrived)."""
        deadline = time.perf_counter() + within_s
        seen, moved = -1, time.perf_counter()
        while time.perf_counter() < deadline:
            now_seen = await self.replies()
            if now_seen != seen:
                seen, moved = now_seen, time.perf_counter()
            if seen >= count:
                return True, seen, moved
            if settle_s is not None and time.perf_counter() - moved > settle_s:
                break
            await asyncio.sleep(0.02)
        return False, seen, moved


class CpuMeter:
    """CPU seconds each process used between ``start`` and ``stop``. With several Parley processes (``parley-web``,
    ``parley-worker-N``), ``parley`` is their sum."""

    def __init__(self, procs: Procs) -> None:
        self.pids = {name: proc.pid for name, proc in procs.procs.items()}
        self.before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        used = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        times = os.times()
        used["driver"] = times.user + times.system
        used["machine"] = machine_busy_seconds()
        return used

    def start(self) -> None:
        self.before = self._now()

    def stop(self) -> dict[str, float]:
        """CPU seconds per process, and ``other``: what the rest of the machine (not this benchmark) used."""
        after = self._now()
        used = {name: round(after[name] - self.before.get(name, 0.0), 2) for name in after}
        machine = used.pop("machine")
        used["other"] = round(max(0.0, machine - sum(used.values())), 2)
        parts = [v for name, v in used.items() if name.startswith("parley-")]
        if parts:
            used["parley"] = round(sum(parts), 2)
        return used


def parley_peak_rss(setup: Setup) -> dict[str, Any]:
    """RSS and peak RSS (``VmHWM``) of each Parley process, in MB; ``parley_*_rss_mb`` is the largest of them
    (the target is per process), ``parley_rss_mb_total`` the sum."""
    memory = {name: memory_kb(setup.procs.pid(name)) for name in setup.parley}
    rss = {name: round(m.get("VmRSS", 0) / 1024, 1) for name, m in memory.items()}
    peak = {name: round(m.get("VmHWM", 0) / 1024, 1) for name, m in memory.items()}
    return {"parley_rss_mb": max(rss.values()), "parley_peak_rss_mb": max(peak.values()),
            "parley_rss_mb_total": round(sum(rss.values()), 1), "parley_rss_mb_by_process": rss,
            "parley_peak_rss_mb_by_process": peak}


def statuses(shots: list[Shot]) -> dict[str, int]:
    """How many webhooks got each HTTP status (0: no answer within the client's 15 s, or a connection error)."""
    return {str(k): v for k, v in sorted(Counter(s.status for s in shots).items())}


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# --------------------------------------------------------------------------------------------- phase 1


async def ack_run(driver: Driver, rate: float, seconds: float, first_user: int) -> dict[str, Any]:
    """Webhooks at ``rate`` per second (open loop) for ``seconds``, one conversation per text, while Parley
    answers them; then wait (bounded) for the replies."""
    total = int(rate * seconds)
    batch = [driver.prepare(user_number(first_user + i), f"hello {i}") for i in range(total)]
    await driver.reset_fakes()
    cpu = CpuMeter(driver.setup.procs)
    cpu.start()
    started = time.perf_counter()
    shots = await driver.open_loop(driver.setup.parley_url, batch, rate)
    sent_s = time.perf_counter() - started
    in_phase = await driver.replies()
    ok = [s for s in shots if s.status == 200]
    reached, replies, done_at = await driver.wait_replies(total, within_s=max(60.0, seconds * 4), settle_s=10.0)
    cpu_used = cpu.stop()
    latencies = [s.latency_s for s in ok]
    received = await driver.json("GET", driver.setup.twilio_url + "/replies")
    return {
        "offered_rate": rate, "seconds": round(sent_s, 2), "sent": total, "acked_200": len(ok),
        "statuses": statuses(shots),
        "errors": total - len(ok), "ack_p50_ms": ms(percentile(latencies, 50)),
        "ack_p99_ms": ms(percentile(latencies, 99)), "ack_max_ms": ms(max(latencies, default=float("nan"))),
        "driver_lag_p99_ms": ms(percentile([s.lag_s for s in shots], 99)),
        "replies_during_sending": in_phase, "replies": replies, "all_answered": reached,
        "duplicate_replies": sum(len(times) - 1 for times in received.values() if len(times) > 1),
        "answered_within_s": round(done_at - started, 2), "cpu_s": cpu_used,
    }


async def phase_ack(driver: Driver, plan: Plan) -> dict[str, Any]:
    """Phase 1 at ``plan.ack_rate``; then, for comparison only, at ``plan.ack_low_rate`` (below what Parley
    can answer, so the webhook does not compete with a backlog of turns)."""
    result = await ack_run(driver, plan.ack_rate, plan.ack_seconds, ACK_USERS)
    result["low_rate"] = await ack_run(driver, plan.ack_low_rate, plan.ack_low_seconds, ACK_LOW_USERS)
    return result


# --------------------------------------------------------------------------------------------- phase 2


def turn_users(plan: Plan, run: int) -> list[str]:
    """The K conversations of turns run ``run`` (each run has its own, so histories are alike in every run)."""
    return [user_number(TURN_USERS + run * TURN_RUN_STRIDE + i) for i in range(plan.turns_conversations)]


async def turns_run(driver: Driver, base: str, users: list[str], rounds: int, tag: str,
                    to: str = AGENT_NUMBER) -> dict[str, Any]:
    """One closed-loop run: a warm-up round (which opens the chats), then ``rounds`` timed rounds; each round
    sends one text to each of the K conversations (on the number ``to``) and waits for K replies."""
    k = len(users)
    batches = [[driver.prepare(u, f"{tag} round {r}", to) for u in users] for r in range(rounds + 1)]
    await driver.reset_fakes()
    await driver.flood(base, batches[0])
    reached, _, _ = await driver.wait_replies(k, within_s=60)
    if not reached:
        return {"turns_per_s": 0.0, "error": "warm-up round not answered within 60 s"}
    cpu = CpuMeter(driver.setup.procs)
    cpu.start()
    started = time.perf_counter()
    for r in range(1, rounds + 1):
        await driver.flood(base, batches[r])
        reached, seen, _ = await driver.wait_replies(k * (r + 1), within_s=120)
        if not reached:
            return {"turns_per_s": 0.0, "error": f"round {r}: {seen - k * r} of {k} replies within 120 s"}
    elapsed = time.perf_counter() - started
    used = cpu.stop()
    turns = k * rounds
    names = list(driver.setup.parley) if base == driver.setup.parley_url else ["floor"]
    by_process = {name: round(used.get(name, 0.0) * 1000 / turns, 3) for name in names}
    return {"turns": turns, "seconds": round(elapsed, 3), "turns_per_s": round(turns / elapsed, 1),
            "cpu_ms_per_turn": round(sum(by_process.values()), 3), "cpu_ms_per_turn_by_process": by_process,
            "cpu_s": used}


async def phase_turns(driver: Driver, plan: Plan) -> dict[str, Any]:
    """Floor and Parley, ``plan.repeats`` times each, alternating; medians."""
    runs: dict[str, list[dict[str, Any]]] = {"floor": [], "parley": []}
    for i in range(plan.repeats):
        for name, base in (("floor", driver.setup.floor_url), ("parley", driver.setup.parley_url)):
            result = await turns_run(driver, base, turn_users(plan, i), plan.turns_rounds, f"{name}{i}")
            runs[name].append(result)
            print(f"  turns run {i + 1}/{plan.repeats} {name}: {result.get('turns_per_s')} turns/s "
                  f"{result.get('error', '')}", file=sys.stderr, flush=True)
    out: dict[str, Any] = {"conversations": plan.turns_conversations, "rounds": plan.turns_rounds, "runs": runs}
    for name, results in runs.items():
        out[f"{name}_turns_per_s"] = statistics.median(r["turns_per_s"] for r in results)
        cpu = [r["cpu_ms_per_turn"] for r in results if "cpu_ms_per_turn" in r]
        out[f"{name}_cpu_ms_per_turn"] = statistics.median(cpu) if cpu else None
    done = [r["cpu_ms_per_turn_by_process"] for r in runs["parley"] if "cpu_ms_per_turn_by_process" in r]
    out["parley_cpu_ms_per_turn_by_process"] = {   # each process's median (they need not add up to the total's)
        name: statistics.median(r[name] for r in done) for name in driver.setup.parley} if done else None
    floor = out["floor_turns_per_s"]
    out["ratio"] = round(out["parley_turns_per_s"] / floor, 3) if floor else 0.0
    return out


async def phase_flow(driver: Driver, plan: Plan) -> dict[str, Any]:
    """``--agent flow``: the single-prompt agent, the flow agent staying at its node and the flow agent moving,
    ``plan.repeats`` times each, in turn, each run on conversations of its own; medians and the ratios of CPU per
    turn (``bench/flow.py``)."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in flow_bench.AGENTS}
    for i in range(plan.repeats):
        for name in flow_bench.AGENTS:
            to = AGENT_NUMBER if name == "single" else flow_bench.FLOW_NUMBER
            users = flow_bench.flow_users(plan.turns_conversations, i, name)
            result = await turns_run(driver, driver.setup.parley_url, users, plan.turns_rounds,
                                     flow_bench.tag(name, i), to)
            runs[name].append(result)
            print(f"  flow run {i + 1}/{plan.repeats} {name}: {result.get('cpu_ms_per_turn')} CPU ms per turn, "
                  f"{result.get('turns_per_s')} turns/s {result.get('error', '')}", file=sys.stderr, flush=True)
    return {"conversations": plan.turns_conversations, "rounds": plan.turns_rounds, **flow_bench.summarize(runs)}


# --------------------------------------------------------------------------------------------- phase 3


def match_replies(sent: list[Shot], received: dict[str, list[float]]) -> tuple[list[float], int, int]:
    """Reply latency of each text: the time to the first reply to its conversation after it. A reply answers
    every text of its conversation sent before it and not answered yet (Parley answers texts that arrive
    together in one reply). (latencies, texts never answered, replies that answered no text)."""
    by_user: dict[str, list[float]] = {}
    for shot in sent:
        by_user.setdefault(shot.user, []).append(shot.wall)
    latencies, unanswered, spare = [], 0, 0
    for user, walls in by_user.items():
        waiting = sorted(walls)
        for reply in sorted(received.get(user, [])):
            answered = [w for w in waiting if w <= reply]
            if not answered:
                spare += 1
            latencies += [reply - w for w in answered]
            waiting = waiting[len(answered):]
        unanswered += len(waiting)
    return latencies, unanswered, spare


async def phase_slow(driver: Driver, plan: Plan, cpu: CpuMeter, profile_dir: Path | None) -> dict[str, Any]:
    """A slow LLM and many conversations: sustained replies, reply latency, Parley's peak RSS (per process)."""
    users = [user_number(SLOW_USERS + i) for i in range(plan.slow_conversations)]
    random.Random(7).shuffle(users)
    total = int(plan.slow_rate * plan.slow_seconds)
    batch = [driver.prepare(users[i % len(users)], f"slow {i}") for i in range(total)]   # round robin
    await driver.reset_fakes()
    await driver.json("POST", driver.llm_base() + "/config", {"delay_s": plan.slow_llm_s})
    profile_out = profile_dir / "slow.txt" if profile_dir else None
    try:
        async with profiled(driver.setup, profile_out) as profile:
            cpu.start()
            started_wall = time.time()
            shots = await driver.open_loop(driver.setup.parley_url, batch, plan.slow_rate)
            sent_wall = time.time()
            reached, replies, _ = await driver.wait_replies(total, within_s=plan.slow_llm_s * 4 + 60,
                                                            settle_s=plan.slow_llm_s + 5)
            used = cpu.stop()
        llm = await driver.json("GET", driver.llm_base() + "/stats")
    finally:
        await driver.json("POST", driver.llm_base() + "/config", {"delay_s": 0.0})
    received = await driver.json("GET", driver.setup.twilio_url + "/replies")
    latencies, unanswered, spare = match_replies([s for s in shots if s.status == 200], received)
    # Sustained: replies that arrived after the first LLM round trip and before sending stopped.
    window_start = started_wall + plan.slow_llm_s + 0.5
    in_window = sum(1 for times in received.values() for t in times if window_start <= t <= sent_wall)
    window = max(sent_wall - window_start, 1e-9)
    return {
        "llm_latency_s": plan.slow_llm_s, "conversations": plan.slow_conversations, "offered_rate": plan.slow_rate,
        "sent": total, "acked_200": sum(1 for s in shots if s.status == 200), "statuses": statuses(shots),
        "replies": replies,
        "all_answered": unanswered == 0 and len(latencies) == total, "unanswered": unanswered,
        "replies_answering_no_text": spare, "reached_reply_count": reached,
        "sustained_replies_per_s": round(in_window / window, 1),
        "reply_p50_ms": ms(percentile(latencies, 50)), "reply_p99_ms": ms(percentile(latencies, 99)),
        "reply_max_ms": ms(max(latencies, default=float("nan"))),
        "ack_p99_ms": ms(percentile([s.latency_s for s in shots if s.status == 200], 99)),
        "llm_max_in_flight": llm.get("max_in_flight"),
        **parley_peak_rss(driver.setup), "cpu_s": used,
        **({"profile": profile} if profile else {}),
    }


# --------------------------------------------------------------------------------------------- phase 4

_MONITOR_LINE = re.compile(r'^\+[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"')


class Monitor:
    """Counts the commands Redis runs (``MONITOR``), split into those clients sent and those run by Lua."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.counts: Counter[tuple[bool, str]] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writer.write(b"MONITOR\r\n")
        await self._writer.drain()
        await asyncio.wait_for(reader.readline(), 5)   # +OK
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            found = _MONITOR_LINE.match(line.decode(errors="replace"))
            if found:
                self.counts[(found.group(1) == "lua", found.group(2).lower())] += 1

    async def stop(self) -> None:
        await asyncio.sleep(0.2)      # let the last lines arrive
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._task


def commandstats(info: dict[str, Any]) -> dict[str, int]:
    """``INFO commandstats`` as command -> calls, without the benchmark's own admin commands."""
    calls = {}
    for name, value in info.items():
        command = name.removeprefix("cmdstat_")
        if command.startswith(("config", "info", "monitor")):
            continue
        calls[command] = int(value["calls"])
    return calls


async def phase_count(driver: Driver, plan: Plan, redis: aioredis.Redis) -> dict[str, Any]:
    """Redis commands per inbound message, over plain turns (conversations with an ongoing chat)."""
    users = turn_users(plan, 0)[:plan.count_messages]   # conversations with an ongoing chat (turns run 1)
    batch = [driver.prepare(u, "count me") for u in users]
    await driver.reset_fakes()
    await asyncio.sleep(1.0)    # the previous phase's last commits
    await redis.config_resetstat()
    monitor = Monitor(driver.setup.redis_port)
    await monitor.start()
    try:
        started = time.perf_counter()
        await driver.flood(driver.setup.parley_url, batch)
        reached, _, _ = await driver.wait_replies(len(batch), within_s=60)
        await asyncio.sleep(0.5)    # commits and acks after the last reply
        elapsed = time.perf_counter() - started
    finally:
        await monitor.stop()
    calls = commandstats(await redis.info("commandstats"))
    pending = sum([(await redis.xpending(stream, keys.WORKER_GROUP))["pending"] for stream in wakeup_streams()])
    n = len(batch)
    total = sum(calls.values())
    lua = sum(c for (in_lua, _), c in monitor.counts.items() if in_lua)
    sent = sum(c for (in_lua, _), c in monitor.counts.items() if not in_lua)
    return {
        "messages": n, "all_answered": reached, "seconds": round(elapsed, 2),
        "pending_after": pending, "commands_total": total,
        "commands_per_msg": round(total / n, 2),
        "client_sent_per_msg": round(sent / n, 2), "in_lua_per_msg": round(lua / n, 2),
        "per_msg_by_command": {c: round(v / n, 2) for c, v in sorted(calls.items(), key=lambda kv: -kv[1])},
    }


# --------------------------------------------------------------------------------------------- profiling

_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def _frame(text: str) -> str:
    found = _FRAME.match(text)
    if not found:
        return text
    path = re.sub(r"^.*/(site-packages|python3\.\d+)/", "", found.group(2)).removeprefix(str(ROOT) + "/")
    return f"{found.group(1)} ({path})"


def _package(frame: str) -> str:
    """The top-level package of a shortened frame: ``openai``, ``asyncio``, ``service``..."""
    path = frame.rpartition(" (")[2].rstrip(")")
    return path.split("/")[0].removesuffix(".py") if "/" in path else path.removesuffix(".py")


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """py-spy's collapsed stacks, in % of samples: the functions with the most own time; the innermost Parley
    function (``service/``) under each sample, i.e. what Parley code the time is spent for; the package of
    the function running."""
    own: Counter[str] = Counter()
    parley: Counter[str] = Counter()
    package: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += n
        package[_package(frames[-1])] += n
        mine = [f for f in frames if "(service/" in f]
        parley[mine[-1] if mine else "(no Parley frame: event loop, aiohttp server, truncated stack)"] += n

    def pct(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / max(total, 1), 1)) for name, n in counter.most_common(top)]

    return {"samples": total, "self_pct": pct(own), "innermost_parley_frame_pct": pct(parley),
            "package_pct": pct(package)}


def summarize_one(procs: Procs, spy: str, target: str, out: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    try:
        summary.update(file=str(out), **summarize_profile(out))
    except OSError:
        summary["error"] = f"py-spy wrote nothing:\n{procs.tail(spy)}"
    print(f"  py-spy profile of {target} ({summary.get('samples')} samples) in {out}:", file=sys.stderr)
    for key in ("innermost_parley_frame_pct", "self_pct", "package_pct"):
        print(f"  {key}:", file=sys.stderr)
        for name, pct in summary.get(key, [])[:15]:
            print(f"    {pct:5.1f}%  {name}", file=sys.stderr)
    return summary


@contextlib.asynccontextmanager
async def profiled(setup: Setup, out: Path | None) -> AsyncIterator[dict[str, Any]]:
    """Record Parley's stacks with py-spy (``--gil``: the thread running Python) while the block runs; the
    yielded dict is filled with the summary afterwards. Without ``out``, nothing. With several Parley processes,
    one py-spy each, to ``<out stem>-<process>.txt``, and the summary has one entry per process."""
    summary: dict[str, Any] = {}
    if out is None:
        yield summary
        return
    procs = setup.procs
    single = list(setup.parley) == ["parley"]
    spies = {name: ("py-spy" if single else f"py-spy-{name}",
                    out if single else out.with_name(f"{out.stem}-{name}{out.suffix}")) for name in setup.parley}
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    try:
        for name, (spy, path) in spies.items():
            procs.start(spy, [py_spy, "record", "--pid", str(procs.pid(name)), "--rate", "100", "--gil",
                              "--format", "raw", "--output", str(path)])
        await asyncio.sleep(1.0)
        for spy, _ in spies.values():
            procs.check(spy)
        yield summary
    finally:
        await asyncio.gather(*(asyncio.to_thread(procs.stop, spy, 15.0, signal.SIGINT) for spy, _ in spies.values()))
    found = {name: summarize_one(procs, spy, name, path) for name, (spy, path) in spies.items()}
    summary.update(found["parley"] if single else found)


async def phase_profile(driver: Driver, plan: Plan, out_dir: Path) -> dict[str, Any]:
    """One more Parley turns run (not scored), with py-spy recording Parley's stacks."""
    async with profiled(driver.setup, out_dir / "turns.txt") as summary:
        result = await turns_run(driver, driver.setup.parley_url, turn_users(plan, plan.repeats), plan.turns_rounds,
                                 "profile")
    return {"turns_per_s_while_profiled": result.get("turns_per_s"), **summary}


# --------------------------------------------------------------------------------------------- report


def verdicts(results: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    ack, turns, slow, count = (results.get(k, {}) for k in ("ack", "turns", "slow", "count"))
    reply_limit_ms = plan.slow_llm_s * 1000 + plan.burst_window_ms + 250
    rows: list[tuple[str, Any, Callable[[Any], bool]]] = [
        ("ack_p99_ms", ack.get("ack_p99_ms"), lambda v: v < 20),
        ("turns_ratio", turns.get("ratio"), lambda v: v >= 0.5),
        ("slow_all_answered", slow.get("all_answered"), lambda v: v is True),
        ("slow_reply_p99_ms", slow.get("reply_p99_ms"), lambda v: v < reply_limit_ms),
        ("slow_rss_mb", slow.get("parley_peak_rss_mb"), lambda v: v < 300),    # the largest Parley process
        ("redis_cmds_per_msg", count.get("commands_per_msg"), lambda v: v <= 20),
    ]
    if "flow" in results:   # only with --agent flow: the default run's report is unchanged
        rows.append(("flow_cpu_ratio", results["flow"].get("cpu_ratio"), lambda v: v <= flow_bench.TARGET_RATIO))
    out = []
    for name, value, ok in rows:
        passed = None if value is None or value != value else bool(ok(value))
        target = TARGETS[name] + (f" (= {reply_limit_ms:.0f} ms)" if name == "slow_reply_p99_ms" else "")
        out.append({"name": name, "value": value, "target": target, "pass": passed})
    return out


def table(results: dict[str, Any], plan: Plan, machine: dict[str, Any]) -> str:
    ack, turns, slow, count = (results.get(k, {}) for k in ("ack", "turns", "slow", "count"))
    verdict = {v["name"]: v for v in results["targets"]}
    low = ack.get("low_rate", {})

    def mark(name: str) -> tuple[str, str]:
        v = verdict[name]
        return v["target"], {True: "PASS", False: "FAIL", None: "n/a"}[v["pass"]]

    def fmt(value: Any, unit: str = "") -> str:
        return "n/a" if value is None else f"{value}{unit}"

    def each(by_process: dict[str, Any] | None, unit: str = "") -> str:
        return ", ".join(f"{name.removeprefix('parley-')} {fmt(v)}" for name, v in (by_process or {}).items()) + unit

    split = plan.layout == "split"

    rows: list[tuple[str, str, str, str]] = [
        (f"1. webhook ack p50 @ {plan.ack_rate:.0f} req/s, {plan.ack_seconds:.0f} s", fmt(ack.get("ack_p50_ms"), " ms"),
         "", ""),
        ("1. webhook ack p99", fmt(ack.get("ack_p99_ms"), " ms"), *mark("ack_p99_ms")),
        ("1. replies to those texts / sent", f"{fmt(ack.get('replies'))} / {fmt(ack.get('sent'))} "
         f"(all within {fmt(ack.get('answered_within_s'))} s)", "", ""),
        (f"1. (for comparison) ack p50 / p99 @ {plan.ack_low_rate:.0f} req/s",
         f"{fmt(low.get('ack_p50_ms'))} / {fmt(low.get('ack_p99_ms'))} ms", "", ""),
        ("2. floor turns/s (median of runs)", fmt(turns.get("floor_turns_per_s")), "", ""),
        ("2. Parley turns/s (median of runs)", fmt(turns.get("parley_turns_per_s")), "", ""),
        ("2. Parley / floor", fmt(turns.get("ratio")), *mark("turns_ratio")),
        ("2. CPU ms per turn: Parley / floor", f"{fmt(turns.get('parley_cpu_ms_per_turn'))} / "
         f"{fmt(turns.get('floor_cpu_ms_per_turn'))}", "", ""),
        *([("2.   Parley's, per process", each(turns.get("parley_cpu_ms_per_turn_by_process")), "", "")]
          if split and turns else []),
        (f"3. slow LLM ({plan.slow_llm_s} s): answered / sent", f"{fmt(slow.get('replies'))} / {fmt(slow.get('sent'))}",
         *mark("slow_all_answered")),
        ("3. sustained replies/s", fmt(slow.get("sustained_replies_per_s")), "", ""),
        ("3. reply latency p50", fmt(slow.get("reply_p50_ms"), " ms"), "", ""),
        ("3. reply latency p99", fmt(slow.get("reply_p99_ms"), " ms"), *mark("slow_reply_p99_ms")),
        (f"3. Parley peak RSS (VmHWM{', largest process' if split else ''})",
         fmt(slow.get("parley_peak_rss_mb"), " MB"), *mark("slow_rss_mb")),
        *([("3.   per process", each(slow.get("parley_peak_rss_mb_by_process"), " MB"), "", "")]
          if split and slow else []),
        ("4. Redis commands per inbound message", fmt(count.get("commands_per_msg")), *mark("redis_cmds_per_msg")),
        ("4.   of which sent by Parley / run in Lua", f"{fmt(count.get('client_sent_per_msg'))} / "
         f"{fmt(count.get('in_lua_per_msg'))}", "", ""),
    ]
    if "flow" in results:
        *first, (name, value) = flow_bench.rows(results["flow"])
        rows += [(n, v, "", "") for n, v in first] + [(name, value, *mark("flow_cpu_ratio"))]
    dirty = " + uncommitted changes" if machine.get("service_changed_since_commit") else ""
    layout = (f"split layout (serve --web-only + {plan.worker_procs} worker process"
              f"{'es' if plan.worker_procs > 1 else ''})" if split else "single layout (one serve process)")
    head = (f"Parley benchmark — {machine['date']} — Parley {machine.get('parley_commit')}{dirty} — {layout} — "
            f"nproc {machine['nproc']}, Python {machine['python']}"
            f"{', quick' if machine['quick'] else ''}{', pinned' if machine['pinned'] else ''}")
    widths = [max(len(r[i]) for r in [*rows, ("metric", "value", "target", "result")]) for i in range(4)]
    lines = [head, "  ".join(h.ljust(w) for h, w in zip(("metric", "value", "target", "result"), widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    other, drive_s = results.get("cpu_s_whole_run", {}).get("other"), results.get("drive_s")
    if other is not None and drive_s:
        lines.append(f"Other processes on this machine (not the benchmark's) used {other} CPU-s in {drive_s} s "
                     f"({100 * other / drive_s:.0f}% of one core); load average {machine['load_average']}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- main


async def drive(setup: Setup, plan: Plan, phases: set[str], profile: Path | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=15)     # Twilio gives a webhook 15 s
    redis = aioredis.from_url(f"redis://127.0.0.1:{setup.redis_port}/0", decode_responses=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        driver = Driver(session, setup)
        cpu = CpuMeter(setup.procs)
        whole = CpuMeter(setup.procs)
        whole.start()
        started = time.perf_counter()
        steps: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
            ("ack", lambda: phase_ack(driver, plan)), ("turns", lambda: phase_turns(driver, plan)),
            ("profile", lambda: phase_profile(driver, plan, profile or Path("."))),
            ("flow", lambda: phase_flow(driver, plan)),
            ("count", lambda: phase_count(driver, plan, redis)),
            ("slow", lambda: phase_slow(driver, plan, cpu, profile))]
        for name, step in steps:
            if name not in phases and not (name == "profile" and profile and "turns" in phases):
                continue
            print(f"phase {name}...", file=sys.stderr, flush=True)
            phase_started = time.perf_counter()
            results[name] = await step()
            results[name]["phase_s"] = round(time.perf_counter() - phase_started, 1)
            for proc in [*setup.parley, "floor"]:
                setup.procs.check(proc)
        results["cpu_s_whole_run"] = whole.stop()
        results["drive_s"] = round(time.perf_counter() - started, 1)
    await redis.aclose()
    return results


def log_summary(work_dir: Path, names: list[str], top: int = 12) -> dict[str, int]:
    """Parley's log lines (JSON, WARNING and up) counted by level and event, over every Parley process (with
    several, each key starts with the process's name); the most frequent ``top``."""
    found: Counter[str] = Counter()
    for name in names:
        try:
            lines = (work_dir / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and "event" in entry:
                who = f"{name}: " if len(names) > 1 else ""
                found[f"{who}{entry.get('level')}, {str(entry['event'])[:80]}"] += 1
    return dict(found.most_common(top))


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info(args: argparse.Namespace, load_at_start: tuple[float, float, float]) -> dict[str, Any]:
    version = _output(["redis-server", "--version"])
    return {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "redis": version, "quick": args.quick, "pinned": args.pin,
            "parley_commit": _output(["git", "rev-parse", "--short", "HEAD"]),
            "service_changed_since_commit": bool(_output(["git", "status", "--porcelain", "--", "service"])),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "load_average_at_start": [round(x, 2) for x in load_at_start]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description="Parley's benchmark.")
    parser.add_argument("--quick", action="store_true", help="a smaller run (under ~2 minutes)")
    parser.add_argument("--pin", action="store_true",
                        help="pin Parley and the floor to CPU 0 and everything else to the other CPUs")
    parser.add_argument("--phases", default="ack,turns,count,slow", help="comma-separated subset to run")
    parser.add_argument("--agent", choices=("single", "flow"), default="single",
                        help="flow: also run the flow phase, the turns of a conversation-flow agent against the "
                             "single-prompt agent's, in the same run (bench/flow.py)")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the JSON results")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (the path is printed)")
    parser.add_argument("--workers", type=int, default=None, help="PARLEY_WORKERS (and the floor's)")
    parser.add_argument("--layout", choices=("single", "split"), default="single",
                        help="single: one `serve` process (webhooks and workers); split: one `serve --web-only` "
                             "and --worker-procs `worker` processes (the floor is one process either way)")
    parser.add_argument("--worker-procs", type=int, default=1, metavar="N",
                        help="the number of `worker` processes with --layout split (default 1)")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                        help="profile Parley with py-spy: one more (unscored) turns run after the turns phase, and "
                             "the slow-LLM phase; collapsed stacks to DIR/turns.txt and DIR/slow.txt, a summary "
                             "printed and kept in the JSON")
    args = parser.parse_args(argv)
    if args.worker_procs < 1:
        parser.error("--worker-procs must be at least 1")
    if args.worker_procs != 1 and args.layout != "split":
        parser.error("--worker-procs goes with --layout split")
    phases = args.phases.split(",")
    if "flow" in phases and args.agent != "flow":
        parser.error("the flow phase needs --agent flow")
    if args.agent == "flow" and "flow" not in phases:
        args.phases = ",".join([*phases, "flow"])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.workers:
        plan = replace(plan, workers=args.workers)
    if args.layout == "split":
        plan = replace(plan, layout="split", worker_procs=args.worker_procs)
    if args.py_spy:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    setup = Setup(work_dir=work_dir, procs=Procs(work_dir))
    setup.procs.handle_signals()   # SIGINT, SIGTERM -> KeyboardInterrupt, never between a start and its record
    started = time.perf_counter()
    load_at_start = os.getloadavg()
    try:
        start_all(setup, plan, args.pin, flow=args.agent == "flow")
        results = asyncio.run(drive(setup, plan, set(args.phases.split(",")), args.py_spy))
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc}); stopping everything", file=sys.stderr)
        return 130
    except BaseException:
        for name in setup.procs.procs:
            print(f"--- {name} log (tail) ---\n{setup.procs.tail(name, 15)}", file=sys.stderr)
        raise
    finally:
        setup.procs.stop_all(first=[*setup.parley, "floor"])   # Parley and the floor before Redis and the fakes
        parley_log = log_summary(work_dir, list(setup.parley))
        if args.keep_logs:
            print(f"logs kept in {work_dir}", file=sys.stderr)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    machine = machine_info(args, load_at_start)
    results["targets"] = verdicts(results, plan)
    results["parley_log"] = parley_log
    report = {"machine": machine, "plan": asdict(plan), "total_s": round(time.perf_counter() - started, 1),
              **results}
    print(table(results, plan, machine))
    if parley_log:
        print("Parley logged (level, event: count): " + "; ".join(f"{k}: {v}" for k, v in parley_log.items()))
    print(f"(total {report['total_s']} s; JSON in {args.out})")
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
