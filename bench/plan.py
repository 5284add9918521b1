"""What a ``bench.run`` offers: the load of each phase (``Plan``, ``QUICK``), the phases run by default, and the
targets the numbers are scored against (``TARGETS``; ``bench.scores`` checks them)."""

from __future__ import annotations

from dataclasses import dataclass

from . import flow as flow_bench

PHASES = ("ack", "turns", "cpu", "count", "slow", "slow400", "flow")   # the order they run in
DEFAULT_PHASES = "ack,turns,cpu,count,slow,slow400"
QUICK_PHASES = "ack,turns,cpu,count,slow"    # --quick leaves the 400 texts/s run out
LAYOUTS = ("default", "single", "split")

TARGETS = {
    "ack_p99_ms": "< 20 ms at 200 req/s",
    "turns_ratio": ">= 0.6 x floor",
    "cpu_first_ratio": "<= 2.5 x floor CPU per turn",
    "cpu_followup_ratio": "<= 1.6 x floor CPU per turn",
    "slow_all_answered": "every text answered once (1.5 s LLM)",
    "slow_ack_p99_ms": "< 20 ms",
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
    cpu_conversations: int = 500      # the cpu phase: K new conversations per round of first texts
    cpu_rounds: int = 2               # rounds of first texts, then as many of follow-ups, per repeat
    slow_llm_s: float = 1.5           # phase 3
    slow_conversations: int = 3_000
    slow_rate: float = 200.0
    slow_seconds: float = 60.0
    slow_high_rate: float = 400.0     # slow400: the same at this rate, reported with no target
    count_messages: int = 300         # phase 4: plain turns counted in Redis
    workers: int = 1024               # PARLEY_WORKERS, per process that runs workers (and the floor's)
    burst_window_ms: int = 0
    layout: str = "default"           # "default": `serve`; "single": `serve --processes 1`; "split" (bench/stack.py)
    processes: int = 0                # `serve --processes N` in the default layout (0: serve's own default)
    worker_procs: int = 0             # the `worker` processes of the split layout (0: not split)


QUICK = Plan(ack_seconds=5.0, ack_low_seconds=4.0, turns_conversations=200, turns_rounds=2, cpu_conversations=200,
             slow_conversations=1_000, slow_seconds=6.0, count_messages=150)


def reply_limit_ms(plan: Plan) -> float:
    """The slow phase's reply p99 target: the LLM's latency + the burst window + 250 ms."""
    return plan.slow_llm_s * 1000 + plan.burst_window_ms + 250


# User numbers by phase (+1415NNNNNNN): each phase (and each turns run) has its own conversations.
ACK_USERS, ACK_LOW_USERS, SLOW_USERS, SLOW_HIGH_USERS = 1_000_000, 1_500_000, 2_000_000, 2_500_000
TURN_USERS, CPU_USERS = 3_000_000, 5_000_000     # bench/flow.py has 4,000,000 on
RUN_STRIDE = 100_000                             # a turns or cpu run's block of conversations
