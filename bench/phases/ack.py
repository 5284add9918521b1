"""Phase 1, ``ack``: webhook acknowledgement latency, open loop, one new conversation per text."""

from __future__ import annotations

import time
from typing import Any

from ..driver import CpuMeter, Driver, ms, percentile, statuses, user_number
from ..plan import ACK_LOW_USERS, ACK_USERS, Plan


async def ack_run(driver: Driver, rate: float, seconds: float, first_user: int) -> dict[str, Any]:
    """Webhooks at ``rate`` per second (open loop) for ``seconds``, one conversation per text, while Parley
    answers them; then wait (bounded) for the replies."""
    total = int(rate * seconds)
    batch = [driver.prepare(user_number(first_user + i), f"hello {i}") for i in range(total)]
    await driver.reset_fakes()
    cpu = CpuMeter(driver.setup)
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
