"""What one Redis call costs the client, alone and with others at once: ``.venv/bin/python -m bench.redis_calls
[--calls N] [--repeats R] [--out FILE]``.

Against a ``redis-server`` of its own, this process's CPU time per call (``time.process_time``) of the send gate's
command (``EXISTS`` of three keys) made three ways: redis-py's stock client (``redis.asyncio.from_url``), Parley's
client (``service.storage.connection.connect``: hiredis packing, the pool without redis-py's bookkeeping) and
Parley's ``pipelined`` (``service.storage.pipelining``: calls made in one turn of the event loop share a round
trip); each by 1, 8 and 32 tasks at once. Each measurement: 500 warm-up calls, then ``--calls``; the variants
interleaved for ``--repeats`` rounds; medians. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from service.storage.connection import connect
from service.storage.pipelining import pipelined

from .procs import ROOT, Procs, start_redis

WARMUP = 500
TASKS = (1, 8, 32)
OUT = ROOT / "bench" / "redis_calls.json"
GATE = ("EXISTS", "{0}optout", "{0}outgoing", "{0}deferred")
VARIANTS = ("redis-py client", "Parley client", "Parley pipelined")


async def timed(call: Callable[[], Awaitable[Any]], calls: int, tasks: int) -> dict[str, float]:
    """CPU and wall µs per call of ``calls`` calls made by ``tasks`` tasks at once."""
    async def loop(n: int) -> None:
        for _ in range(n):
            await call()

    await asyncio.gather(*(loop(WARMUP // tasks + 1) for _ in range(tasks)))
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(loop(calls // tasks) for _ in range(tasks)))
    done = calls // tasks * tasks
    return {"cpu_us": round((time.process_time() - cpu) * 1e6 / done, 2),
            "wall_us": round((time.perf_counter() - wall) * 1e6 / done, 2)}


async def run(url: str, calls: int, repeats: int) -> dict[str, dict[str, list[dict[str, float]]]]:
    stock = aioredis.from_url(url, decode_responses=True, max_connections=1024)
    parley = connect(url)
    variants: dict[str, Callable[[], Awaitable[Any]]] = {
        "redis-py client": lambda: stock.exists(*GATE[1:]),
        "Parley client": lambda: parley.exists(*GATE[1:]),
        "Parley pipelined": lambda: pipelined(parley, [GATE]),
    }
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        name: {str(tasks): [] for tasks in TASKS} for name in variants}
    try:
        for _ in range(repeats):
            for tasks in TASKS:
                for name, call in variants.items():
                    results[name][str(tasks)].append(await timed(call, calls, tasks))
    finally:
        await stock.aclose()
        await parley.aclose()
    return results


def medians(results: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, dict[str, dict[str, float]]]:
    return {name: {tasks: {key: round(statistics.median(r[key] for r in runs), 2) for key in ("cpu_us", "wall_us")}
                   for tasks, runs in by_tasks.items()} for name, by_tasks in results.items()}


def report(found: dict[str, dict[str, dict[str, float]]], calls: int, repeats: int, load: list[float]) -> str:
    lines = [f"Redis calls (EXISTS of 3 keys), {calls} calls x {repeats} repeats, medians; CPU µs per call of this "
             f"process (wall µs); load average {load}",
             f"{'variant':<20}" + "".join(f"{f'{t} at once':>22}" for t in TASKS)]
    for name in VARIANTS:
        cells = "".join(f"{found[name][str(t)]['cpu_us']:>12.1f} ({found[name][str(t)]['wall_us']:>6.1f})"
                        for t in TASKS)
        lines.append(f"{name:<20}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_calls", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per variant, tasks and repeat")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every variant, interleaved")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the JSON results")
    args = parser.parse_args(argv)
    if args.calls < max(TASKS) or args.repeats < 1:
        parser.error(f"--calls must be at least {max(TASKS)} and --repeats at least 1")
    work_dir = Path(tempfile.mkdtemp(prefix="parley-redis-calls-"))
    procs = Procs(work_dir)
    procs.handle_signals()
    try:
        port = start_redis(procs, "redis", work_dir)
        results = asyncio.run(run(f"redis://127.0.0.1:{port}/0", args.calls, args.repeats))
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc}); stopping Redis", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(work_dir, ignore_errors=True)
    load = [round(x, 2) for x in os.getloadavg()]
    found = medians(results)
    print(report(found, args.calls, args.repeats, load))
    out = {"machine": {"python": platform.python_version(), "nproc": os.cpu_count(), "load_average": load},
           "plan": {"calls": args.calls, "repeats": args.repeats, "warmup": WARMUP, "tasks": list(TASKS)},
           "medians": found, "runs": results}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
