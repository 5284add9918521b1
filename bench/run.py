"""Parley's benchmark: ``.venv/bin/python -m bench.run [--quick]`` from the repository root.

Starts, as separate processes on 127.0.0.1 (``bench/stack.py``): a redis-server of its own (and a second one for
the floor), the fake Twilio and fake OpenAI of ``tests/fakes`` (``bench/fake_twilio.py``, ``bench/fake_openai.py``),
a receiver of Parley's lifecycle events (``bench/sink.py``), Parley (``python -m service serve`` and its children;
``--layout single``: one process; ``--layout split``: ``serve --web-only`` and ``--worker-procs`` x ``python -m
service worker``) and the floor (``bench/floor.py``). Then it sends signed Twilio webhooks and measures, phase by
phase (``bench/phases/``): webhook acknowledgement latency, turns per second against the floor, CPU per text of a
first text, a follow-up and an end of chat against the floor's, Redis commands per inbound message, and reply
latency and memory with a slow LLM at 200 and 400 texts a second. It prints one table, writes
``bench/results.json`` and appends a summary to ``bench/history.jsonl``. Every process is stopped on exit, Ctrl-C
included. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from . import history
from .driver import CpuMeter, Driver
from .phases.ack import phase_ack
from .phases.count import phase_count
from .phases.cpu import phase_cpu
from .phases.slow import phase_slow, phase_slow400
from .phases.turns import phase_flow, phase_profile, phase_turns
from .plan import DEFAULT_PHASES, LAYOUTS, PHASES, QUICK, QUICK_PHASES, Plan
from .procs import ROOT, Procs
from .scores import table, verdicts
from .stack import Setup, check_parley, start_all

OUT = ROOT / "bench" / "results.json"


async def drive(setup: Setup, plan: Plan, phases: set[str], profile: Path | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=15)     # Twilio gives a webhook 15 s
    redis = aioredis.from_url(f"redis://127.0.0.1:{setup.redis_port}/0", decode_responses=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        driver = Driver(session, setup)
        whole = CpuMeter(setup)
        whole.start()
        started = time.perf_counter()

        def floor_cpu() -> float | None:    # the turns phase's, when it ran
            found = results.get("turns", {}).get("floor_cpu_ms_per_turn")
            return float(found) if found is not None else None

        steps: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
            ("ack", lambda: phase_ack(driver, plan)), ("turns", lambda: phase_turns(driver, plan)),
            ("profile", lambda: phase_profile(driver, plan, profile or Path("."))),
            ("flow", lambda: phase_flow(driver, plan)),
            ("cpu", lambda: phase_cpu(driver, plan, redis, floor_cpu())),
            ("count", lambda: phase_count(driver, plan, redis)),
            ("slow", lambda: phase_slow(driver, plan, profile)),
            ("slow400", lambda: phase_slow400(driver, plan))]
        for name, step in steps:
            if name not in phases and not (name == "profile" and profile and "turns" in phases):
                continue
            print(f"phase {name}...", file=sys.stderr, flush=True)
            phase_started = time.perf_counter()
            results[name] = await step()
            results[name]["phase_s"] = round(time.perf_counter() - phase_started, 1)
            check_parley(setup)
            setup.procs.check("floor")
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
                process = entry.get("process")   # the default layout's children all write to parley's log
                who = f"{name}: " if len(names) > 1 else f"{process}: " if process else ""
                found[f"{who}{entry.get('level')}, {str(entry['event'])[:80]}"] += 1
    return dict(found.most_common(top))


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info(args: argparse.Namespace, load_at_start: tuple[float, float, float],
                 processes: list[str]) -> dict[str, Any]:
    version = _output(["redis-server", "--version"])
    return {"parley_processes": processes, "nproc": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(),
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
    parser.add_argument("--phases", default=None,
                        help=f"comma-separated, of {','.join(PHASES)} (default {DEFAULT_PHASES}; with --quick "
                             f"{QUICK_PHASES})")
    parser.add_argument("--agent", choices=("single", "flow"), default="single",
                        help="flow: also run the flow phase, the turns of a conversation-flow agent against the "
                             "single-prompt agent's, in the same run (bench/flow.py)")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the JSON results")
    parser.add_argument("--no-history", action="store_true",
                        help="do not append this run's summary to the history (bench/history.jsonl)")
    parser.add_argument("--history", type=Path, default=history.HISTORY, help="the history file to append to")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (the path is printed)")
    parser.add_argument("--workers", type=int, default=None, help="PARLEY_WORKERS (and the floor's)")
    parser.add_argument("--layout", choices=LAYOUTS, default="default",
                        help="default: `serve` with no flags (a supervisor, a web child and worker children, one "
                             "process per core); single: `serve --processes 1`; split: one `serve --web-only` and "
                             "--worker-procs `worker` processes (the floor is one process in every layout)")
    parser.add_argument("--processes", type=int, default=None, metavar="N",
                        help="`serve --processes N` with --layout default (default: serve's own, one per core)")
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
    if args.processes is not None and (args.processes < 1 or args.layout != "default"):
        parser.error("--processes N (at least 1) goes with --layout default")
    if args.phases is None:
        args.phases = QUICK_PHASES if args.quick else DEFAULT_PHASES
    phases = args.phases.split(",")
    unknown = [phase for phase in phases if phase not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s) {','.join(unknown)}: the phases are {','.join(PHASES)}")
    if "flow" in phases and args.agent != "flow":
        parser.error("the flow phase needs --agent flow")
    if args.agent == "flow" and "flow" not in phases:
        args.phases = ",".join([*phases, "flow"])
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.workers:
        plan = replace(plan, workers=args.workers)
    plan = replace(plan, layout=args.layout, processes=args.processes or 0,
                   worker_procs=args.worker_procs if args.layout == "split" else 0)
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
        processes = list(setup.parley_pids)
        if args.keep_logs:
            print(f"logs kept in {work_dir}", file=sys.stderr)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    machine = machine_info(args, load_at_start, processes)
    results["targets"] = verdicts(results, plan)
    results["parley_log"] = parley_log
    report = {"machine": machine, "plan": asdict(plan), "total_s": round(time.perf_counter() - started, 1),
              **results}
    print(table(results, plan, machine))
    if parley_log:
        print("Parley logged (level, event: count): " + "; ".join(f"{k}: {v}" for k, v in parley_log.items()))
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if not args.no_history:
        history.append(history.summary(report, argv, args.phases.split(",")), args.history)
    kept = "" if args.no_history else f"; summary appended to {args.history}"
    print(f"(total {report['total_s']} s; JSON in {args.out}{kept})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
