"""``bench.redis_calls`` runs end to end against a Redis of its own and reports every variant at every concurrency
(what it measures is read in bench/README.md; its numbers are not checked here: speed is for the benchmark)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import redis_calls


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on the PATH")
def test_every_variant_is_measured_at_every_concurrency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "calls.json"
    assert redis_calls.main(["--calls", "64", "--repeats", "1", "--out", str(out)]) == 0
    found = json.loads(out.read_text())
    assert set(found["medians"]) == set(redis_calls.VARIANTS)
    for by_tasks in found["medians"].values():
        assert set(by_tasks) == {str(t) for t in redis_calls.TASKS}
        assert all(m["cpu_us"] > 0 and m["wall_us"] > 0 for m in by_tasks.values())
    printed = capsys.readouterr().out
    assert all(name in printed for name in redis_calls.VARIANTS)


def test_too_few_calls_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        redis_calls.main(["--calls", "8"])
    assert "--calls must be at least 32" in capsys.readouterr().err
