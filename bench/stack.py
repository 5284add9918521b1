"""What a ``bench.run`` starts, and where: its Redis servers, the fakes, the event sink, Parley in one of its
layouts, and the floor (see ``bench/README.md``, *What runs* and *Layouts*).

Parley's layouts: ``default`` is ``python -m service serve`` with no flags: a supervisor and its children (one
web child on ``PARLEY_PORT``, worker children), found in ``/proc`` once it is up, or, from a Parley whose
``serve`` is one process, that process alone; ``single`` is ``serve --processes 1`` (``serve`` where the flag
does not exist yet); ``split`` is ``serve --web-only`` and ``worker`` processes started by the benchmark.
``Setup.parley_pids`` has every Parley process, whichever started it: CPU, memory and profiles cover them all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from service.cli.supervisor import default_processes
from service.storage import keys

from . import flow as flow_bench
from .plan import Plan
from .procs import (
    ROOT,
    Procs,
    children,
    environ,
    free_port,
    parent_of,
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
SUPERVISOR = "parley-serve"       # the default layout's supervisor, in ``Setup.parley_pids``, when it has children
CHILDREN_WITHIN_S = 20.0


@dataclass
class Setup:
    """Where everything runs."""

    work_dir: Path
    procs: Procs
    redis_port: int = 0
    floor_redis_port: int = 0
    twilio_url: str = ""
    llm_url: str = ""
    sink_url: str = ""                # the event sink (bench/sink.py): PARLEY_WEBHOOK_URL is its /events
    parley_url: str = ""              # the process that takes the webhooks
    floor_url: str = ""
    parley: dict[str, str] = field(default_factory=dict)     # the Parley processes started here: name -> base URL
    parley_workers: list[str] = field(default_factory=list)  # those of them that run workers
    parley_pids: dict[str, int] = field(default_factory=dict)   # every Parley process (children too): name -> pid
    children: dict[str, int] = field(default_factory=dict)      # the default layout's children: name -> pid


def wakeup_streams() -> list[str]:
    """Parley's wake-up streams: one (``keys.WAKEUPS``) or, sharded, ``keys.wakeups(shard)`` for each shard."""
    if hasattr(keys, "wakeups"):
        return [keys.wakeups(shard) for shard in range(keys.SHARDS)]
    return [vars(keys)["WAKEUPS"]]    # only a Parley from before the sharding has it


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
        # Lifecycle events (chat_started, chat_ended, chat_analyzed) go to the sink; it is on 127.0.0.1, which the
        # outbound policy refuses unless allowed.
        "PARLEY_WEBHOOK_URL": setup.sink_url + "/events", "PARLEY_OUTBOUND_ALLOW": "127.0.0.1",
        "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": setup.llm_url,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_API_BASE_URL": setup.twilio_url,
    })
    return env


def serve_has_processes() -> bool:
    """Whether this Parley's ``serve`` takes ``--processes`` (a supervisor of several processes)."""
    try:
        shown = subprocess.run(python_module("service", "serve", "--help"), capture_output=True, text=True,
                               cwd=ROOT, timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--processes" in shown


def layout_commands(plan: Plan, supervised: bool) -> list[tuple[str, list[str]]]:
    """The processes the benchmark starts for ``plan.layout``: (name, ``python -m service`` arguments)."""
    if plan.layout == "split":
        return [("parley-web", ["serve", "--web-only"]),
                *((f"parley-worker-{i}", ["worker"]) for i in range(1, plan.worker_procs + 1))]
    if plan.layout == "single":
        return [("parley", ["serve", "--processes", "1"] if supervised else ["serve"])]
    return [("parley", ["serve", "--processes", str(plan.processes)] if plan.processes else ["serve"])]


def expected_children(setup: Setup, plan: Plan, supervised: bool) -> int:
    """How many children the default layout's ``serve`` starts: ``--processes``, or what the supervisor makes of
    the cores it may use (``default_processes``), when more than one (one process is today's ``serve``, which
    starts none); none from a ``serve`` without a supervisor."""
    if plan.layout != "default" or not supervised:
        return 0
    count = plan.processes or default_processes(len(os.sched_getaffinity(setup.procs.pid("parley"))))
    return count if count > 1 else 0


def start_parley(setup: Setup, plan: Plan, cpus: set[int] | None, supervised: bool) -> None:
    """Start the layout's processes (each with a port of its own for its web tier or health checks). Not waited
    for."""
    layout = layout_commands(plan, supervised)
    for name, command in layout:
        port = free_port()
        setup.procs.start(name, python_module("service", *command), env=parley_env(setup, plan, port), cpus=cpus)
        setup.parley[name] = f"http://127.0.0.1:{port}"
        setup.parley_pids[name] = setup.procs.pid(name)
    setup.parley_url = setup.parley[layout[0][0]]
    setup.parley_workers = [name for name, command in layout if "--web-only" not in command]


def child_name(pid: int, index: int) -> str:
    """``parley-<PARLEY_PROCESS_NAME>`` of a child (``parley-web``, ``parley-worker-1``...), else by position."""
    name = environ(pid).get("PARLEY_PROCESS_NAME")
    return f"parley-{name}" if name else f"parley-child-{index}"


def discover_children(setup: Setup, expected: int, within_s: float = CHILDREN_WITHIN_S) -> None:
    """Wait (bounded) until the supervisor has ``expected`` children, and record them: the supervisor becomes
    ``parley-serve`` in ``parley_pids``, each child ``parley-<its PARLEY_PROCESS_NAME>``."""
    supervisor = setup.procs.pid("parley")
    deadline = time.monotonic() + within_s
    found = children(supervisor)
    while len(found) < expected and time.monotonic() < deadline:
        setup.procs.check("parley")
        time.sleep(0.1)
        found = children(supervisor)
    if len(found) < expected:
        raise RuntimeError(f"parley (the supervisor, pid {supervisor}) has {len(found)} of {expected} children "
                           f"after {within_s} s:\n{setup.procs.tail('parley')}")
    setup.children = {child_name(pid, i): pid for i, pid in enumerate(found, start=1)}
    setup.parley_pids = {SUPERVISOR: supervisor, **setup.children}


def readers_expected(setup: Setup) -> int:
    """Wake-up readers to wait for: one per worker child of the default layout, else one per process started here
    that runs workers."""
    if setup.children:
        return sum(1 for name in setup.children if name != "parley-web")
    return len(setup.parley_workers)


def wait_parley(setup: Setup, plan: Plan, supervised: bool) -> None:
    """Every Parley process started here answers ``/readyz`` (Redis answers, the agents are published; in the
    default layout, its web child), the default layout's children are found, and every process that runs workers
    has joined the wake-up stream's consumer group (its first ``XREADGROUP``), so no phase starts while a worker
    is still starting. Each wait is bounded and fails early if a process died."""
    for name, url in setup.parley.items():
        wait_http(setup.procs, name, url + "/readyz")
    expected = expected_children(setup, plan, supervised)
    if expected:
        discover_children(setup, expected)
    wait_consumers(setup.procs, setup.parley_workers, setup.redis_port, wakeup_streams(), keys.WORKER_GROUP,
                   expected=readers_expected(setup))


def check_parley(setup: Setup) -> None:
    """Every Parley process is still running: those started here, and the default layout's children (a child that
    is gone, even if its supervisor started another, is a crash under load)."""
    for name in setup.parley:
        setup.procs.check(name)
    supervisor = setup.parley_pids.get(SUPERVISOR)
    for name, pid in setup.children.items():
        if parent_of(pid) != supervisor:
            raise RuntimeError(f"{name} (pid {pid}, a child of parley) is gone:\n{setup.procs.tail('parley')}")


def start_all(setup: Setup, plan: Plan, pin: bool, flow: bool = False) -> None:
    """redis x2, fake Twilio, fake OpenAI, the event sink, Parley (one process or several), floor. With ``pin``:
    Parley (every process of it) and the floor on CPU 0, the rest on the other CPUs. With ``flow``: the flow agent
    too."""
    procs = setup.procs
    cpus = sorted(os.sched_getaffinity(0))
    app_cpus = {cpus[0]} if pin and len(cpus) > 1 else None
    rest = set(cpus[1:]) if app_cpus else None
    if rest:
        os.sched_setaffinity(0, rest)
    supervised = plan.layout != "split" and serve_has_processes()
    setup.redis_port = start_redis(procs, "redis", setup.work_dir, rest)
    setup.floor_redis_port = start_redis(procs, "redis-floor", setup.work_dir, rest)
    twilio_port, llm_port, sink_port, floor_port = (free_port() for _ in range(4))
    procs.start("fake-twilio", python_module("bench.fake_twilio", "--port", str(twilio_port),
                                             "--account", f"{ACCOUNT_SID}:{AUTH_TOKEN}"), cpus=rest)
    procs.start("fake-openai", python_module("bench.fake_openai", "--port", str(llm_port)), cpus=rest)
    procs.start("sink", python_module("bench.sink", "--port", str(sink_port)), cpus=rest)
    setup.twilio_url, setup.llm_url = f"http://127.0.0.1:{twilio_port}", f"http://127.0.0.1:{llm_port}/v1"
    setup.sink_url = f"http://127.0.0.1:{sink_port}"
    wait_http(procs, "fake-twilio", setup.twilio_url + "/stats")
    wait_http(procs, "fake-openai", f"http://127.0.0.1:{llm_port}/stats")
    wait_http(procs, "sink", setup.sink_url + "/stats")
    write_agents(setup.work_dir / "agents", plan, flow)
    start_parley(setup, plan, app_cpus, supervised)
    procs.start("floor", python_module(
        "bench.floor", "--port", str(floor_port), "--redis-url", f"redis://127.0.0.1:{setup.floor_redis_port}/0",
        "--llm-url", setup.llm_url, "--twilio-url", setup.twilio_url, "--account-sid", ACCOUNT_SID,
        "--auth-token", AUTH_TOKEN, "--workers", str(plan.workers)), cpus=app_cpus)
    setup.floor_url = f"http://127.0.0.1:{floor_port}"
    wait_parley(setup, plan, supervised)
    wait_http(procs, "floor", setup.floor_url + "/readyz")
    parley = ", ".join(f"{name} pid {pid}" for name, pid in setup.parley_pids.items())
    print(f"started ({plan.layout} layout): {parley}, webhooks at {setup.parley_url}; floor pid {procs.pid('floor')}; "
          f"logs in {setup.work_dir}", file=sys.stderr, flush=True)
