"""The README's benchmark table, made from ``bench/history.jsonl``: ``python -m bench.report`` rewrites the block
between ``BEGIN`` and ``END`` in ``README.md``; ``--check`` only says (exit 1) whether it is stale.

The block shows the latest complete full run (every phase of a plain ``bench.run``), or, while the history has
none, the latest complete run, marked quick; the command that ran is printed above its numbers. Below it, the
last ``RECENT`` runs' main numbers, one line each, so a change in them shows. ``tests/test_bench_report.py``
holds the README equal to what this makes from the history.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .history import HISTORY, load
from .procs import ROOT

README = ROOT / "README.md"
BEGIN = "<!-- bench-table: begin (made by `python -m bench.report` from bench/history.jsonl; do not edit) -->"
END = "<!-- bench-table: end -->"
RECENT = 8

# Each scored number: its words in the table, and its unit.
LABELS = {
    "ack_p99_ms": ("webhook ack p99 at 200 texts/s (a new conversation each)", " ms"),
    "turns_ratio": ("turns/s against the floor's", ""),
    "cpu_first_ratio": ("CPU per first text against the floor's per turn", ""),
    "cpu_followup_ratio": ("CPU per follow-up text against the floor's per turn", ""),
    "slow_all_answered": ("slow LLM: every text answered once", ""),
    "slow_ack_p99_ms": ("slow LLM: webhook ack p99", " ms"),
    "slow_reply_p99_ms": ("slow LLM: reply p99", " ms"),
    "slow_rss_mb": ("slow LLM: peak RSS, largest process", " MB"),
    "redis_cmds_per_msg": ("Redis commands per text", ""),
    "flow_cpu_ratio": ("flow agent CPU per turn against single-prompt", ""),
}
# Unscored numbers shown under the scored ones: (words, the numbers' names, unit).
INFO = [
    ("turns/s: Parley / floor", ("parley_turns_per_s", "floor_turns_per_s"), ""),
    ("CPU ms per turn: Parley / floor", ("parley_cpu_ms_per_turn", "floor_cpu_ms_per_turn"), ""),
    ("CPU ms per text: first / follow-up / end of chat (floor)",
     ("cpu_first_ms", "cpu_followup_ms", "cpu_end_ms", "cpu_floor_ms"), ""),
    ("slow LLM: reply p50, sustained replies/s", ("slow_reply_p50_ms", "slow_sustained_replies_per_s"), ""),
    ("at 400 texts/s (no target): unanswered, duplicates", ("slow400_unanswered", "slow400_duplicates"), ""),
    ("at 400 texts/s: ack p99, reply p50 / p99 (ms)",
     ("slow400_ack_p99_ms", "slow400_reply_p50_ms", "slow400_reply_p99_ms"), ""),
    ("at 400 texts/s: sustained replies/s, peak RSS (MB)", ("slow400_sustained_replies_per_s", "slow400_rss_mb"), ""),
]
RESULT = {True: "PASS", False: "FAIL", None: "n/a"}


def shown_run(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run the table shows: the latest complete full run, else the latest complete run, else the latest."""
    for wanted in (lambda r: r.get("complete") and r.get("plan") == "full", lambda r: r.get("complete"),
                   lambda r: True):
        found = [run for run in runs if wanted(run)]
        if found:
            return found[-1]
    return None


def value(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v}{unit}"


def processes(run: dict[str, Any]) -> str:
    names = [name.removeprefix("parley-") for name in run.get("processes") or []]
    return f"{run['layout']} layout" + (f" ({', '.join(names)})" if len(names) > 1 else " (one process)")


def main_table(run: dict[str, Any]) -> list[str]:
    dirty = " + uncommitted changes to service/" if run.get("service_changed") else ""
    which = "full run" if run["plan"] == "full" else "run (quick: no full run yet)"
    lines = [f"The latest {which}: `{run['command']}`, "
             f"{run['date']}, Parley {run['commit']}{dirty}, {processes(run)}, nproc {run.get('nproc')}; load "
             f"average {value(run.get('load_average_at_start'))} at the start, {value(run.get('load_average'))} at "
             f"the end; other processes used {value(run.get('other_cpu_pct_of_one_core'), ' %')} of one core.",
             "", "| metric | value | target | result |", "|---|---|---|---|"]
    for target in run["targets"]:
        words, unit = LABELS.get(target["name"], (target["name"], ""))
        lines.append(f"| {words} | {value(target['value'], unit)} | {target['target']} | {RESULT[target['pass']]} |")
    numbers = run.get("numbers", {})
    for words, names, unit in INFO:
        if any(name in numbers for name in names):
            lines.append(f"| {words} | {' / '.join(value(numbers.get(n), unit) for n in names)} | | |")
    return lines


def recent_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| date | commit | layout | plan | turns ratio | first / floor | follow-up / floor | cmds per text | "
             "slow ack p99 ms | slow reply p99 ms | load at start |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs[-RECENT:][::-1]:
        scored = {t["name"]: t["value"] for t in run["targets"]}
        cells = [run["date"], run["commit"], run["layout"], run["plan"] + ("" if run.get("complete") else ", partial"),
                 *(value(scored.get(name)) for name in ("turns_ratio", "cpu_first_ratio", "cpu_followup_ratio",
                                                        "redis_cmds_per_msg", "slow_ack_p99_ms", "slow_reply_p99_ms")),
                 value((run.get("load_average_at_start") or [None])[0])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render(runs: list[dict[str, Any]]) -> str:
    """The block's text (between the markers), from the history's runs, oldest first."""
    run = shown_run(runs)
    if run is None:
        return "No benchmark run in `bench/history.jsonl` yet.\n"
    shown = min(RECENT, len(runs))
    lines = [*main_table(run), "", f"The last {shown} run{'s' if shown > 1 else ''} of `bench/history.jsonl`, newest "
             "first:",
             "", *recent_table(runs)]
    return "\n".join(lines) + "\n"


def block(text: str) -> str:
    """The block now in ``text`` (a README), between the markers; a clear error without them."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no benchmark block: add the lines {BEGIN!r} and {END!r}")
    return text[start + len(BEGIN):end].removeprefix("\n")


def rewrite(text: str, new_block: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no benchmark block: add the lines {BEGIN!r} and {END!r}")
    return text[:start + len(BEGIN)] + "\n" + new_block + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's block is stale; change nothing")
    parser.add_argument("--history", type=Path, default=HISTORY)
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    fresh = render(load(args.history))
    if block(text) == fresh:
        print(f"{args.readme}: the benchmark block is up to date")
        return 0
    if args.check:
        print(f"{args.readme}: the benchmark block is stale: run python -m bench.report", file=sys.stderr)
        return 1
    args.readme.write_text(rewrite(text, fresh))
    print(f"{args.readme}: the benchmark block rewritten from {args.history}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
