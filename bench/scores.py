"""A run's numbers against their targets (``verdicts``), and the table ``bench.run`` prints (``table``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import flow as flow_bench
from .plan import TARGETS, Plan, reply_limit_ms

VERDICT_WORDS = {True: "PASS", False: "FAIL", None: "n/a"}


def verdicts(results: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    """Each scored number: its name, value, target and whether it met it (None: not measured in this run)."""
    ack, turns, cpu, slow, count = (results.get(k, {}) for k in ("ack", "turns", "cpu", "slow", "count"))
    limit = reply_limit_ms(plan)
    rows: list[tuple[str, Any, Callable[[Any], bool]]] = [
        ("ack_p99_ms", ack.get("ack_p99_ms"), lambda v: v < 20),
        ("turns_ratio", turns.get("ratio"), lambda v: v >= 0.6),
        ("cpu_first_ratio", cpu.get("first_ratio"), lambda v: v <= 2.5),
        ("cpu_followup_ratio", cpu.get("followup_ratio"), lambda v: v <= 1.6),
        ("slow_all_answered", slow.get("all_answered"), lambda v: v is True),
        ("slow_ack_p99_ms", slow.get("ack_p99_ms"), lambda v: v < 20),
        ("slow_reply_p99_ms", slow.get("reply_p99_ms"), lambda v: v < limit),
        ("slow_rss_mb", slow.get("parley_peak_rss_mb"), lambda v: v < 300),    # the largest Parley process
        ("redis_cmds_per_msg", count.get("commands_per_msg"), lambda v: v <= 20),
    ]
    if "flow" in results:   # only with --agent flow: the default run's report is unchanged
        rows.append(("flow_cpu_ratio", results["flow"].get("cpu_ratio"), lambda v: v <= flow_bench.TARGET_RATIO))
    out = []
    for name, value, ok in rows:
        passed = None if value is None or value != value else bool(ok(value))
        target = TARGETS[name] + (f" (= {limit:.0f} ms)" if name == "slow_reply_p99_ms" else "")
        out.append({"name": name, "value": value, "target": target, "pass": passed})
    return out


def fmt(value: Any, unit: str = "") -> str:
    return "n/a" if value is None else f"{value}{unit}"


def each(by_process: dict[str, Any] | None, unit: str = "") -> str:
    return ", ".join(f"{name.removeprefix('parley-')} {fmt(v)}" for name, v in (by_process or {}).items()) + unit


def layout_words(plan: Plan, processes: list[str]) -> str:
    """The table's words for the layout measured, with the Parley processes found."""
    if plan.layout == "split":
        return (f"split layout (serve --web-only + {plan.worker_procs} worker process"
                f"{'es' if plan.worker_procs > 1 else ''})")
    if plan.layout == "single":
        return "single layout (serve --processes 1)"
    found = ", ".join(name.removeprefix("parley-") for name in processes)
    return f"default layout (serve: {found})" if len(processes) > 1 else "default layout (serve: one process)"


def slow_rows(plan: Plan, slow: dict[str, Any], n: str, rate: float, mark: Callable[[str], tuple[str, str]] | None,
              several: bool) -> list[tuple[str, str, str, str]]:
    """The rows of a slow run; ``mark`` scores them (the 200 texts/s run), None reports them only (400)."""
    def scored(name: str) -> tuple[str, str]:
        return mark(name) if mark else ("", "")

    return [
        (f"{n}. slow LLM ({plan.slow_llm_s} s) @ {rate:.0f} texts/s, {plan.slow_seconds:.0f} s: answered / sent",
         f"{fmt(slow.get('replies'))} / {fmt(slow.get('sent'))} ({fmt(slow.get('unanswered'))} unanswered, "
         f"{fmt(slow.get('duplicate_replies'))} duplicates)", *scored("slow_all_answered")),
        (f"{n}. webhook ack p50 / p99", f"{fmt(slow.get('ack_p50_ms'))} / {fmt(slow.get('ack_p99_ms'))} ms",
         *scored("slow_ack_p99_ms")),
        (f"{n}. sustained replies/s", fmt(slow.get("sustained_replies_per_s")), "", ""),
        (f"{n}. reply latency p50", fmt(slow.get("reply_p50_ms"), " ms"), "", ""),
        (f"{n}. reply latency p99", fmt(slow.get("reply_p99_ms"), " ms"), *scored("slow_reply_p99_ms")),
        (f"{n}. Parley CPU ms per text", fmt(slow.get("parley_cpu_ms_per_text")), "", ""),
        (f"{n}. Parley peak RSS (VmHWM{', largest process' if several else ''})",
         fmt(slow.get("parley_peak_rss_mb"), " MB"), *scored("slow_rss_mb")),
        *([(f"{n}.   per process", each(slow.get("parley_peak_rss_mb_by_process"), " MB"), "", "")]
          if several and slow else []),
    ]


def table(results: dict[str, Any], plan: Plan, machine: dict[str, Any]) -> str:
    ack, turns, cpu, slow, count = (results.get(k, {}) for k in ("ack", "turns", "cpu", "slow", "count"))
    verdict = {v["name"]: v for v in results["targets"]}
    low = ack.get("low_rate", {})
    processes = list(machine.get("parley_processes", ["parley"]))
    several = len(processes) > 1

    def mark(name: str) -> tuple[str, str]:
        v = verdict[name]
        return v["target"], VERDICT_WORDS[v["pass"]]

    rows: list[tuple[str, str, str, str]] = [
        (f"1. webhook ack p50 @ {plan.ack_rate:.0f} req/s, {plan.ack_seconds:.0f} s", fmt(ack.get("ack_p50_ms"), " ms"),
         "", ""),
        ("1. webhook ack p99", fmt(ack.get("ack_p99_ms"), " ms"), *mark("ack_p99_ms")),
        ("1. replies to those texts / sent", f"{fmt(ack.get('replies'))} / {fmt(ack.get('sent'))} "
         f"(all within {fmt(ack.get('answered_within_s'))} s)", "", ""),
        (f"1. (for comparison) ack p50 / p99 @ {plan.ack_low_rate:.0f} req/s",
         f"{fmt(low.get('ack_p50_ms'))} / {fmt(low.get('ack_p99_ms'))} ms", "", ""),
        ("2. floor turns/s (median of runs)", fmt(turns.get("floor_turns_per_s")), "", ""),
        ("2. Parley turns/s (median of runs)", fmt(turns.get("parley_turns_per_s")), "", ""),
        ("2. Parley / floor", fmt(turns.get("ratio")), *mark("turns_ratio")),
        ("2. CPU ms per turn: Parley / floor", f"{fmt(turns.get('parley_cpu_ms_per_turn'))} / "
         f"{fmt(turns.get('floor_cpu_ms_per_turn'))}", "", ""),
        *([("2.   Parley's, per process", each(turns.get("parley_cpu_ms_per_turn_by_process")), "", "")]
          if several and turns else []),
        ("2b. CPU ms per text: first / follow-up / end of chat",
         f"{fmt(cpu.get('first_cpu_ms'))} / {fmt(cpu.get('followup_cpu_ms'))} / {fmt(cpu.get('end_cpu_ms'))}", "", ""),
        ("2b. floor CPU ms per turn: its runs here / the turns phase's",
         f"{fmt(cpu.get('floor_cpu_ms_per_turn'))} / {fmt(cpu.get('turns_phase_floor_cpu_ms_per_turn'))}", "", ""),
        ("2b. first text / floor (median of paired runs)", fmt(cpu.get("first_ratio")), *mark("cpu_first_ratio")),
        ("2b. follow-up / floor (paired)", fmt(cpu.get("followup_ratio")), *mark("cpu_followup_ratio")),
        ("2b. end of chat / floor (paired; no target)", fmt(cpu.get("end_ratio")), "", ""),
        *([("2b.   first text, per process", each(cpu.get("first_cpu_ms_by_process")), "", "")]
          if several and cpu else []),
        *slow_rows(plan, slow, "3", plan.slow_rate, mark, several),
        *(slow_rows(plan, results["slow400"], "3b", plan.slow_high_rate, None, several)
          if "slow400" in results else []),
        ("4. Redis commands per inbound message", fmt(count.get("commands_per_msg")), *mark("redis_cmds_per_msg")),
        ("4.   of which sent by Parley / run in Lua", f"{fmt(count.get('client_sent_per_msg'))} / "
         f"{fmt(count.get('in_lua_per_msg'))}", "", ""),
    ]
    if "flow" in results:
        *first, (name, value) = flow_bench.rows(results["flow"])
        rows += [(n, v, "", "") for n, v in first] + [(name, value, *mark("flow_cpu_ratio"))]
    dirty = " + uncommitted changes" if machine.get("service_changed_since_commit") else ""
    head = (f"Parley benchmark — {machine['date']} — Parley {machine.get('parley_commit')}{dirty} — "
            f"{layout_words(plan, processes)} — nproc {machine['nproc']}, Python {machine['python']}"
            f"{', quick' if machine['quick'] else ''}{', pinned' if machine['pinned'] else ''}")
    widths = [max(len(r[i]) for r in [*rows, ("metric", "value", "target", "result")]) for i in range(4)]
    lines = [head, "  ".join(h.ljust(w) for h, w in zip(("metric", "value", "target", "result"), widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    other, drive_s = results.get("cpu_s_whole_run", {}).get("other"), results.get("drive_s")
    if other is not None and drive_s:
        lines.append(f"Other processes on this machine (not the benchmark's) used {other} CPU-s in {drive_s} s "
                     f"({100 * other / drive_s:.0f}% of one core); load average {machine['load_average']}.")
    return "\n".join(lines)
