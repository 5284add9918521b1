"""The ``cpu`` phase: Parley's CPU per text for a new conversation's first text and for a follow-up, and per chat
ended through the API, against the floor's CPU per turn.

Closed loop, instant fakes, ``plan.repeats`` runs, each on conversations of its own. A run: ``plan.cpu_rounds``
rounds of first texts, each to K (``plan.cpu_conversations``) new conversations (the webhook, the chat opened,
``chat_started`` queued and delivered to the event sink, the LLM call, the Twilio send, the commit); then as many
rounds of follow-ups, one more text to each of those conversations, block by block; then ``PATCH /end-chat`` for
each of their chats (``chat_ended``, the post-chat analysis's LLM call, ``chat_analyzed``). Each part is timed
from its first request until its replies and events have all arrived and Parley has acknowledged every
wake-up, and its CPU (``/proc``, every Parley process) is divided by its texts (or chats). Before each Parley run,
the floor's closed-loop turns run (the turns phase's loop, on conversations of its own) gives the yardstick of that
run: each ratio is the median over the runs of Parley's part / the floor's CPU per turn just before it. The
machine's speed drifts by a third within minutes here, so a ratio is taken between neighbours, not across phases.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

import redis.asyncio as aioredis

from service.storage import keys

from ..driver import CpuMeter, Driver, user_number
from ..plan import CPU_USERS, RUN_STRIDE, Plan
from ..stack import wakeup_streams
from .turns import turn_users, turns_run

PARTS = ("first", "followup", "end")
WAIT_S = 120.0


def cpu_users(plan: Plan, run: int) -> list[list[str]]:
    """Run ``run``'s conversations: one block of K per round of first texts."""
    k = plan.cpu_conversations
    base = CPU_USERS + run * RUN_STRIDE
    return [[user_number(base + r * k + i) for i in range(k)] for r in range(plan.cpu_rounds)]


async def wait_idle(redis: aioredis.Redis, within_s: float = WAIT_S) -> bool:
    """Wait (bounded) until Parley has acknowledged every wake-up it read (the turns' commits are done)."""
    deadline = time.perf_counter() + within_s
    while time.perf_counter() < deadline:
        pending = [(await redis.xpending(stream, keys.WORKER_GROUP))["pending"] for stream in wakeup_streams()]
        if sum(pending) == 0:
            return True
        await asyncio.sleep(0.02)
    return False


def per_unit(used: dict[str, float], names: list[str], units: int) -> dict[str, Any]:
    """Parley's CPU ms per text (or chat): the sum over its processes, and each one's share."""
    by_process = {name: round(used.get(name, 0.0) * 1000 / units, 3) for name in names}
    return {"parley_cpu_ms": round(sum(by_process.values()), 3), "parley_cpu_ms_by_process": by_process,
            "cpu_s": used}


async def texts(driver: Driver, redis: aioredis.Redis, blocks: list[list[str]], tag: str, before: int,
                events: dict[str, int]) -> dict[str, Any]:
    """Send one text to each conversation of each block, a block at a time, waiting for each block's replies (the
    fake Twilio had ``before``); then for ``events`` at the sink and for Parley to be idle. CPU per text."""
    setup = driver.setup
    batches = [[driver.prepare(user, f"{tag} {i}") for user in block] for i, block in enumerate(blocks)]
    cpu = CpuMeter(setup)
    cpu.start()
    started = time.perf_counter()
    sent = 0
    for batch in batches:
        shots = await driver.flood(setup.parley_url, batch)
        sent += len(batch)
        if any(shot.status != 200 for shot in shots):
            return {"error": f"{tag}: {sum(s.status != 200 for s in shots)} webhooks not answered 200"}
        reached, seen, _ = await driver.wait_replies(before + sent, within_s=WAIT_S)
        if not reached:
            return {"error": f"{tag}: {seen - before} of {sent} replies within {WAIT_S:.0f} s"}
    delivered, by_event = await driver.wait_events(events, within_s=WAIT_S)
    idle = await wait_idle(redis)
    elapsed = time.perf_counter() - started
    used = cpu.stop()
    if not delivered or not idle:
        return {"error": f"{tag}: events {by_event} (wanted {events}), idle {idle}"}
    return {"texts": sent, "seconds": round(elapsed, 3), "texts_per_s": round(sent / elapsed, 1),
            "events": by_event, **per_unit(used, list(setup.parley_pids), sent)}


async def ends(driver: Driver, users: list[str], events: dict[str, int]) -> dict[str, Any]:
    """End each of ``users``' chats through the API (64 requests at a time), and wait until the sink has every
    ``chat_ended`` and ``chat_analyzed``. CPU per chat."""
    chat_ids = await driver.chat_ids()
    missing = [user for user in users if user not in chat_ids]
    if missing:
        return {"error": f"end: the sink saw no chat_started for {len(missing)} conversations"}
    slots = asyncio.Semaphore(64)

    async def end(chat_id: str) -> int:
        async with slots:
            return await driver.end_chat(chat_id)

    cpu = CpuMeter(driver.setup)
    cpu.start()
    started = time.perf_counter()
    answers = await asyncio.gather(*(end(chat_ids[user]) for user in users))
    delivered, by_event = await driver.wait_events(events, within_s=WAIT_S)
    elapsed = time.perf_counter() - started
    used = cpu.stop()
    analyses = (await driver.json("GET", driver.llm_base() + "/stats"))["analyses"]
    refused = sum(1 for status in answers if status != 204)
    if refused or not delivered:
        return {"error": f"end: {refused} end-chat calls not answered 204; events {by_event} (wanted {events})"}
    return {"chats": len(users), "seconds": round(elapsed, 3), "events": by_event, "analyses": analyses,
            **per_unit(used, list(driver.setup.parley_pids), len(users))}


async def cpu_run(driver: Driver, plan: Plan, redis: aioredis.Redis, run: int) -> dict[str, dict[str, Any]]:
    """One run: first texts, follow-ups, ends; each part's result (or its error)."""
    blocks = cpu_users(plan, run)
    users = [user for block in blocks for user in block]
    n = len(users)
    await wait_idle(redis)
    await driver.reset_fakes()
    out: dict[str, dict[str, Any]] = {}
    out["first"] = await texts(driver, redis, blocks, f"cpu{run} first", 0, {"chat_started": n})
    if "error" in out["first"]:
        return out
    out["followup"] = await texts(driver, redis, blocks, f"cpu{run} followup", n, {"chat_started": n})
    if "error" in out["followup"]:
        return out
    out["end"] = await ends(driver, users, {"chat_started": n, "chat_ended": n, "chat_analyzed": n})
    events = await driver.events()
    out["end"]["sink_repeats"] = events["repeats"]
    if events["by_event"] != {"chat_started": n, "chat_ended": n, "chat_analyzed": n}:
        out["end"]["error"] = f"the sink received {events['by_event']}, not {n} of each event"
    return out


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if key in run]
    return round(statistics.median(values), 3) if values else None


def ratio(part: float | None, floor: float | None) -> float | None:
    return round(part / floor, 3) if part is not None and floor else None


def paired_ratio(runs: list[dict[str, Any]], floor_runs: list[dict[str, Any]]) -> float | None:
    """The median over the runs of each Parley run's CPU ms per text / its floor run's CPU ms per turn."""
    ratios = [r for run, floor in zip(runs, floor_runs, strict=True)
              if (r := ratio(run.get("parley_cpu_ms"), floor.get("cpu_ms_per_turn"))) is not None]
    return round(statistics.median(ratios), 3) if ratios else None


def floor_users(plan: Plan, run: int) -> list[str]:
    """The floor's conversations before Parley's run ``run``: after the turns and profile runs' blocks."""
    return turn_users(plan, plan.repeats + 1 + run)


async def phase_cpu(driver: Driver, plan: Plan, redis: aioredis.Redis, turns_floor_ms: float | None) -> dict[str, Any]:
    """``plan.repeats`` floor and Parley runs, alternating; the medians of CPU ms per text, and of their ratios to
    the floor's CPU ms per turn of the run just before (``turns_floor_ms``, the turns phase's median, is shown
    beside it)."""
    runs: dict[str, list[dict[str, Any]]] = {part: [] for part in PARTS}
    floor_runs: list[dict[str, Any]] = []
    for i in range(plan.repeats):
        floor_runs.append(await turns_run(driver, driver.setup.floor_url, floor_users(plan, i), plan.turns_rounds,
                                          f"cpufloor{i}"))
        found = await cpu_run(driver, plan, redis, i)
        for part in PARTS:
            runs[part].append(found.get(part, {"error": "not run"}))
        print(f"  cpu run {i + 1}/{plan.repeats}: " + ", ".join(
            f"{part} {found[part].get('parley_cpu_ms', found[part].get('error'))}" for part in found) + " CPU ms",
            file=sys.stderr, flush=True)
    out: dict[str, Any] = {"conversations": plan.cpu_conversations, "rounds": plan.cpu_rounds,
                           "floor_cpu_ms_per_turn": median_of(floor_runs, "cpu_ms_per_turn"),
                           "turns_phase_floor_cpu_ms_per_turn": turns_floor_ms, "runs": runs, "floor_runs": floor_runs}
    for part in PARTS:
        out[f"{part}_cpu_ms"] = median_of(runs[part], "parley_cpu_ms")
        out[f"{part}_ratio"] = paired_ratio(runs[part], floor_runs)
        done = [r["parley_cpu_ms_by_process"] for r in runs[part] if "parley_cpu_ms_by_process" in r]
        out[f"{part}_cpu_ms_by_process"] = {
            name: statistics.median(r[name] for r in done) for name in driver.setup.parley_pids} if done else None
    out["errors"] = [r["error"] for part in PARTS for r in runs[part] if "error" in r]
    return out
