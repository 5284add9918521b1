"""The benchmark's history and the README table made from it: README.md's block is exactly what ``bench.report``
makes from ``bench/history.jsonl`` (a stale README fails here: run ``python -m bench.report``), the table shows
the latest complete full run (else the latest complete quick one), and a history line keeps what a run scored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import history, report
from bench.plan import QUICK, Plan
from bench.scores import verdicts


def test_the_readme_table_is_the_one_the_history_makes() -> None:
    runs = history.load()
    assert runs, "bench/history.jsonl is empty: bench.run appends to it"
    assert report.block(report.README.read_text()) == report.render(runs), (
        "README.md's benchmark block is stale: run .venv/bin/python -m bench.report")


def line(date: str, plan: str, complete: bool = True, ratio: float = 0.5) -> dict[str, Any]:
    return {"date": date, "commit": "abc1234", "layout": "default", "processes": ["parley-serve", "parley-web",
            "parley-worker-1"], "plan": plan, "complete": complete, "command": ".venv/bin/python -m bench.run",
            "nproc": 2, "load_average_at_start": [1.5, 1.0, 0.5], "load_average": [2.0, 1.0, 0.5],
            "other_cpu_pct_of_one_core": 12, "targets": [
                {"name": "turns_ratio", "value": ratio, "target": ">= 0.6 x floor", "pass": ratio >= 0.6}],
            "numbers": {"parley_turns_per_s": 300.0, "floor_turns_per_s": 400.0}}


def test_the_table_shows_the_latest_complete_full_run_and_lists_the_recent_ones() -> None:
    runs = [line("d1", "full", ratio=0.61), line("d2", "quick", ratio=0.4), line("d3", "full", complete=False)]
    assert report.shown_run(runs) is runs[0]
    text = report.render(runs)
    assert text.startswith("The latest full run: `.venv/bin/python -m bench.run`, d1, Parley abc1234, default "
                           "layout (serve, web, worker-1), nproc 2; load average [1.5, 1.0, 0.5] at the start")
    assert "| turns/s against the floor's | 0.61 | >= 0.6 x floor | PASS |" in text
    assert "| turns/s: Parley / floor | 300.0 / 400.0 | | |" in text
    recent = text.split("newest first:")[1].strip().splitlines()[2:]
    assert [row.split(" | ")[0] for row in recent] == ["| d3", "| d2", "| d1"]
    assert "full, partial" in recent[0] and "| 0.4 |" in recent[1]
    only_quick = report.render([line("d2", "quick", ratio=0.4)])
    assert only_quick.startswith("The latest run (quick: no full run yet): `.venv/bin/python -m bench.run`")
    assert "The last 1 run of `bench/history.jsonl`, newest first:" in only_quick
    assert "| 0.4 | >= 0.6 x floor | FAIL |" in only_quick
    assert report.render([]) == "No benchmark run in `bench/history.jsonl` yet.\n"


def test_the_block_is_rewritten_in_place_and_a_readme_without_markers_is_a_clear_error(tmp_path: Path) -> None:
    readme, hist = tmp_path / "README.md", tmp_path / "history.jsonl"
    readme.write_text(f"# Parley\n\nbefore\n{report.BEGIN}\nold numbers\n{report.END}\nafter\n")
    history.append(line("d1", "full"), hist)
    assert report.main(["--readme", str(readme), "--history", str(hist), "--check"]) == 1
    assert report.main(["--readme", str(readme), "--history", str(hist)]) == 0
    text = readme.read_text()
    assert text.startswith(f"# Parley\n\nbefore\n{report.BEGIN}\nThe latest full run:")
    assert text.endswith(f"{report.END}\nafter\n") and "old numbers" not in text
    assert report.main(["--readme", str(readme), "--history", str(hist), "--check"]) == 0
    readme.write_text("# Parley\n")
    with pytest.raises(ValueError, match=r"README\.md has no benchmark block"):
        report.main(["--readme", str(readme), "--history", str(hist)])


def test_a_history_line_keeps_the_run_its_scores_and_the_command_without_its_outputs() -> None:
    assert history.command(["--quick", "--out", "/tmp/x.json", "--no-history", "--phases=cpu", "--out=/tmp/y"]) == (
        ".venv/bin/python -m bench.run --quick --phases=cpu")
    results: dict[str, Any] = {"cpu": {"first_ratio": 2.4, "followup_ratio": 1.7, "first_cpu_ms": 5.0},
                               "count": {"commands_per_msg": 19.4}, "cpu_s_whole_run": {"other": 3.0},
                               "drive_s": 60.0}
    results["targets"] = verdicts(results, QUICK)
    full_report = {"machine": {"date": "d", "parley_commit": "abc1234", "quick": True, "pinned": False, "nproc": 2,
                               "parley_processes": ["parley"], "load_average": [1.0, 1.0, 1.0],
                               "load_average_at_start": [0.5, 0.5, 0.5]},
                   "plan": {"layout": "default"}, "total_s": 70.0, **results}
    summary = history.summary(full_report, ["--quick", "--phases", "cpu,count"], ["cpu", "count"])
    assert summary["plan"] == "quick" and summary["complete"] is False and summary["layout"] == "default"
    assert summary["other_cpu_pct_of_one_core"] == 5 and summary["numbers"] == {"cpu_first_ms": 5.0}
    scored = {t["name"]: (t["value"], t["pass"]) for t in summary["targets"]}
    assert scored["cpu_first_ratio"] == (2.4, True) and scored["cpu_followup_ratio"] == (1.7, False)
    assert scored["redis_cmds_per_msg"] == (19.4, True) and scored["turns_ratio"] == (None, None)
    assert history.summary(full_report, [], ["ack", "turns", "cpu", "count", "slow"])["complete"] is True
    full_report["machine"]["quick"] = False
    assert history.summary(full_report, [], ["ack", "turns", "cpu", "count", "slow"])["complete"] is False
    assert Plan().slow_seconds == 60.0 and Plan().slow_rate == 200.0 and Plan().slow_high_rate == 400.0
