"""Phase 2, ``turns``: closed-loop turns per second of Parley against the floor's, in the same run; with
``--agent flow``, the same loop against the flow agent (``flow``); with ``--py-spy``, one more Parley run profiled
(``profile``)."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .. import flow as flow_bench
from ..driver import CpuMeter, Driver, user_number
from ..plan import RUN_STRIDE, TURN_USERS, Plan
from ..profile import profiled
from ..stack import AGENT_NUMBER


def turn_users(plan: Plan, run: int) -> list[str]:
    """The K conversations of turns run ``run`` (each run has its own, so histories are alike in every run)."""
    return [user_number(TURN_USERS + run * RUN_STRIDE + i) for i in range(plan.turns_conversations)]


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
    cpu = CpuMeter(driver.setup)
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
    names = list(driver.setup.parley_pids) if base == driver.setup.parley_url else ["floor"]
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
        name: statistics.median(r[name] for r in done) for name in driver.setup.parley_pids} if done else None
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


async def phase_profile(driver: Driver, plan: Plan, out_dir: Path) -> dict[str, Any]:
    """One more Parley turns run (not scored), with py-spy recording Parley's stacks."""
    async with profiled(driver.setup, out_dir / "turns.txt") as summary:
        result = await turns_run(driver, driver.setup.parley_url, turn_users(plan, plan.repeats), plan.turns_rounds,
                                 "profile")
    return {"turns_per_s_while_profiled": result.get("turns_per_s"), **summary}
