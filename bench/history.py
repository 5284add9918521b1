"""The benchmark's history: one JSON line per ``bench.run`` in ``bench/history.jsonl`` (tracked), so the numbers
of every run stay next to the code they measured, and the README's table is made from them (``bench.report``).

A line (``summary``) holds when and what was measured (date, commit, whether ``service/`` had uncommitted
changes, layout and Parley's processes, quick or full plan, the phases run, the command), how busy the machine
was (load average at the start and the end, the CPU other processes used), every scored number with its target
and verdict, and the main unscored ones (``NUMBERS``). ``bench.run --out`` keeps everything else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .plan import DEFAULT_PHASES, QUICK_PHASES
from .procs import ROOT

HISTORY = ROOT / "bench" / "history.jsonl"
_LEFT_OUT = {"--out": 1, "--no-history": 0, "--keep-logs": 0, "--history": 1}   # option -> values it takes

# The unscored numbers kept: name -> (phase, key in the phase's results).
NUMBERS = {
    "ack_p50_ms": ("ack", "ack_p50_ms"),
    "floor_turns_per_s": ("turns", "floor_turns_per_s"),
    "parley_turns_per_s": ("turns", "parley_turns_per_s"),
    "parley_cpu_ms_per_turn": ("turns", "parley_cpu_ms_per_turn"),
    "floor_cpu_ms_per_turn": ("turns", "floor_cpu_ms_per_turn"),
    "cpu_first_ms": ("cpu", "first_cpu_ms"),
    "cpu_followup_ms": ("cpu", "followup_cpu_ms"),
    "cpu_end_ms": ("cpu", "end_cpu_ms"),
    "cpu_floor_ms": ("cpu", "floor_cpu_ms_per_turn"),
    "cpu_end_ratio": ("cpu", "end_ratio"),
    "slow_sent": ("slow", "sent"),
    "slow_unanswered": ("slow", "unanswered"),
    "slow_duplicates": ("slow", "duplicate_replies"),
    "slow_reply_p50_ms": ("slow", "reply_p50_ms"),
    "slow_sustained_replies_per_s": ("slow", "sustained_replies_per_s"),
    "slow400_sent": ("slow400", "sent"),
    "slow400_unanswered": ("slow400", "unanswered"),
    "slow400_duplicates": ("slow400", "duplicate_replies"),
    "slow400_ack_p99_ms": ("slow400", "ack_p99_ms"),
    "slow400_reply_p50_ms": ("slow400", "reply_p50_ms"),
    "slow400_reply_p99_ms": ("slow400", "reply_p99_ms"),
    "slow400_sustained_replies_per_s": ("slow400", "sustained_replies_per_s"),
    "slow400_rss_mb": ("slow400", "parley_peak_rss_mb"),
}


def command(argv: list[str]) -> str:
    """The command that ran, as a reader would type it again: without where its outputs went."""
    kept: list[str] = []
    skip = 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name, has_value, _ = arg.partition("=")
        if name in _LEFT_OUT:
            skip = 0 if has_value else _LEFT_OUT[name]
            continue
        kept.append(arg)
    return " ".join([".venv/bin/python -m bench.run", *kept])


def summary(report: dict[str, Any], argv: list[str], phases: list[str]) -> dict[str, Any]:
    """The history line of one run, from ``bench.run``'s full report."""
    machine, plan = report["machine"], report["plan"]
    quick = bool(machine["quick"])
    wanted = (QUICK_PHASES if quick else DEFAULT_PHASES).split(",")
    other, drive_s = report.get("cpu_s_whole_run", {}).get("other"), report.get("drive_s")
    numbers = {name: report.get(phase, {}).get(key) for name, (phase, key) in NUMBERS.items()}
    return {
        "date": machine["date"], "commit": machine.get("parley_commit"),
        "service_changed": bool(machine.get("service_changed_since_commit")),
        "layout": plan["layout"], "processes": machine.get("parley_processes"),
        "plan": "quick" if quick else "full", "phases": phases,
        "complete": all(phase in phases for phase in wanted), "command": command(argv),
        "pinned": bool(machine.get("pinned")), "nproc": machine.get("nproc"),
        "load_average_at_start": machine.get("load_average_at_start"), "load_average": machine.get("load_average"),
        "other_cpu_pct_of_one_core": round(100 * other / drive_s) if other is not None and drive_s else None,
        "total_s": report.get("total_s"),
        "targets": [{k: v[k] for k in ("name", "value", "target", "pass")} for v in report["targets"]],
        "numbers": {name: value for name, value in numbers.items() if value is not None},
    }


def append(line: dict[str, Any], path: Path = HISTORY) -> None:
    with path.open("a") as f:
        f.write(json.dumps(line, sort_keys=True, default=str) + "\n")


def load(path: Path = HISTORY) -> list[dict[str, Any]]:
    """Every run in the history, oldest first ([] without a history)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
