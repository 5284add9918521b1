"""``bench.run``'s cpu phase scores each part by the median of its paired ratios: each Parley run against the floor run
just before it, runs that failed left out."""

from __future__ import annotations

from typing import Any

from bench.phases.cpu import paired_ratio


def test_each_run_is_divided_by_its_own_floor_run_and_the_median_taken() -> None:
    floors = [{"cpu_ms_per_turn": 1.0}, {"cpu_ms_per_turn": 2.0}, {"cpu_ms_per_turn": 1.0}]
    runs = [{"parley_cpu_ms": 1.5}, {"parley_cpu_ms": 3.6}, {"parley_cpu_ms": 1.7}]
    # Pairs 1.5, 1.8, 1.7: median 1.7. (The medians' ratio, 1.7 / 1.0, would agree here only by chance.)
    assert paired_ratio(runs, floors) == 1.7
    runs[2] = {"parley_cpu_ms": 2.2}
    assert paired_ratio(runs, floors) == 1.8      # pairs 1.5, 1.8, 2.2; the medians' ratio would be 2.2


def test_a_failed_run_or_floor_run_is_left_out() -> None:
    floors: list[dict[str, Any]] = [{"cpu_ms_per_turn": 1.0}, {"error": "round 1: 3 of 500"}, {"cpu_ms_per_turn": 1.0}]
    runs: list[dict[str, Any]] = [{"parley_cpu_ms": 1.5}, {"parley_cpu_ms": 9.0}, {"error": "not run"}]
    assert paired_ratio(runs, floors) == 1.5
    assert paired_ratio([{"error": "not run"}], [{"cpu_ms_per_turn": 1.0}]) is None
