"""Phase 3, ``slow`` (and ``slow400``): a slow LLM and many conversations, open loop. Every text answered once,
the webhook's acknowledgement and the reply's latency, and Parley's peak memory per process."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from ..driver import CpuMeter, Driver, Shot, ms, parley_peak_rss, percentile, statuses, user_number
from ..plan import SLOW_HIGH_USERS, SLOW_USERS, Plan
from ..profile import profiled


def match_replies(sent: list[Shot], received: dict[str, list[float]]) -> tuple[list[float], int, int]:
    """Reply latency of each text: the time to the first reply to its conversation after it. A reply answers
    every text of its conversation sent before it and not answered yet (Parley answers texts that arrive
    together in one reply). (latencies, texts never answered, replies that answered no text: with a backlog,
    Parley may answer two texts apart after both arrived, so these are not repeats; the fake Twilio counts
    those)."""
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


async def slow_run(driver: Driver, plan: Plan, rate: float, first_user: int, tag: str,
                   profile_out: Path | None = None) -> dict[str, Any]:
    """Texts at ``rate`` per second for ``plan.slow_seconds``, round robin over ``plan.slow_conversations`` in a
    shuffled order, with the fake LLM answering after ``plan.slow_llm_s``; then wait (bounded) for the replies."""
    users = [user_number(first_user + i) for i in range(plan.slow_conversations)]
    random.Random(7).shuffle(users)
    total = int(rate * plan.slow_seconds)
    batch = [driver.prepare(users[i % len(users)], f"{tag} {i}") for i in range(total)]   # round robin
    await driver.reset_fakes()
    await driver.json("POST", driver.llm_base() + "/config", {"delay_s": plan.slow_llm_s})
    cpu = CpuMeter(driver.setup)
    try:
        async with profiled(driver.setup, profile_out) as profile:
            cpu.start()
            started_wall = time.time()
            shots = await driver.open_loop(driver.setup.parley_url, batch, rate)
            sent_wall = time.time()
            reached, replies, _ = await driver.wait_replies(
                total, within_s=plan.slow_seconds + plan.slow_llm_s * 4 + 60, settle_s=plan.slow_llm_s + 5)
            used = cpu.stop()
        llm = await driver.json("GET", driver.llm_base() + "/stats")
    finally:
        await driver.json("POST", driver.llm_base() + "/config", {"delay_s": 0.0})
    received = await driver.json("GET", driver.setup.twilio_url + "/replies")
    # Every text sent counts, whatever its webhook's answer: Parley may have taken a text whose answer came too late.
    latencies, unanswered, spare = match_replies([s for s in shots if s.wall], received)
    repeats = (await driver.json("GET", driver.setup.twilio_url + "/stats"))["repeats"]
    acks = [s.latency_s for s in shots]     # a webhook not answered within the client's 15 s counts as 15 s
    # Sustained: replies that arrived after the first LLM round trip and before sending stopped.
    window_start = started_wall + plan.slow_llm_s + 0.5
    in_window = sum(1 for times in received.values() for t in times if window_start <= t <= sent_wall)
    window = max(sent_wall - window_start, 1e-9)
    return {
        "llm_latency_s": plan.slow_llm_s, "conversations": plan.slow_conversations, "offered_rate": rate,
        "seconds": plan.slow_seconds, "sent": total, "acked_200": sum(1 for s in shots if s.status == 200),
        "statuses": statuses(shots),
        "replies": replies,
        "all_answered": unanswered == 0 and repeats == 0, "unanswered": unanswered,
        "duplicate_replies": repeats, "replies_answering_no_text": spare, "reached_reply_count": reached,
        "sustained_replies_per_s": round(in_window / window, 1),
        "reply_p50_ms": ms(percentile(latencies, 50)), "reply_p99_ms": ms(percentile(latencies, 99)),
        "reply_max_ms": ms(max(latencies, default=float("nan"))),
        "ack_p50_ms": ms(percentile(acks, 50)), "ack_p99_ms": ms(percentile(acks, 99)),
        "ack_max_ms": ms(max(acks, default=float("nan"))),
        "driver_lag_p99_ms": ms(percentile([s.lag_s for s in shots], 99)),
        "llm_max_in_flight": llm.get("max_in_flight"),
        "parley_cpu_ms_per_text": round(used.get("parley", 0.0) * 1000 / max(total, 1), 3),
        **parley_peak_rss(driver.setup), "cpu_s": used,
        **({"profile": profile} if profile else {}),
    }


async def phase_slow(driver: Driver, plan: Plan, profile_dir: Path | None) -> dict[str, Any]:
    """At ``plan.slow_rate`` (scored); Parley's peak RSS is read after it (``VmHWM``: the whole run's peak so far)."""
    return await slow_run(driver, plan, plan.slow_rate, SLOW_USERS, "slow",
                          profile_dir / "slow.txt" if profile_dir else None)


async def phase_slow400(driver: Driver, plan: Plan) -> dict[str, Any]:
    """The same at ``plan.slow_high_rate``, on conversations of its own, reported with no target: where it bends."""
    return await slow_run(driver, plan, plan.slow_high_rate, SLOW_HIGH_USERS, "fast")
