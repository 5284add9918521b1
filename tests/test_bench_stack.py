"""``bench.run``'s layouts: the commands each one starts, the default layout's children found in ``/proc`` (a real
process tree standing in for ``serve``'s supervisor), a child that dies caught, and the options checked."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.phases.cpu import cpu_users
from bench.plan import CPU_USERS, QUICK, RUN_STRIDE, TURN_USERS, Plan
from bench.procs import Procs, children, parent_of
from bench.run import parse_args
from bench.stack import (
    SUPERVISOR,
    Setup,
    check_parley,
    discover_children,
    expected_children,
    layout_commands,
    readers_expected,
)

# Stands in for `serve`'s supervisor: two children named as Parley names them, reaped when they die.
SUPERVISOR_SCRIPT = textwrap.dedent("""
    import os, subprocess, sys, time
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env={**os.environ, "PARLEY_PROCESS_NAME": name}) for name in ("web", "worker-1")]
    for kid in kids:
        kid.wait()
    time.sleep(60)
""")


def test_each_layout_starts_its_commands() -> None:
    assert layout_commands(Plan(), supervised=True) == [("parley", ["serve"])]
    assert layout_commands(Plan(processes=3), supervised=True) == [("parley", ["serve", "--processes", "3"])]
    assert layout_commands(Plan(layout="single"), supervised=True) == [("parley", ["serve", "--processes", "1"])]
    assert layout_commands(Plan(layout="single"), supervised=False) == [("parley", ["serve"])]
    assert layout_commands(Plan(layout="split", worker_procs=2), supervised=False) == [
        ("parley-web", ["serve", "--web-only"]), ("parley-worker-1", ["worker"]), ("parley-worker-2", ["worker"])]


def test_a_serve_without_a_supervisor_has_no_children_to_wait_for(tmp_path: Path) -> None:
    setup = Setup(work_dir=tmp_path, procs=Procs(tmp_path))
    assert expected_children(setup, Plan(), supervised=False) == 0
    assert expected_children(setup, Plan(processes=3), supervised=True) == 3
    assert expected_children(setup, Plan(processes=1), supervised=True) == 0
    setup.parley_workers = ["parley"]
    assert readers_expected(setup) == 1


def test_the_default_layouts_children_are_found_named_and_watched(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    setup = Setup(work_dir=tmp_path, procs=procs)
    try:
        procs.start("parley", [sys.executable, "-c", SUPERVISOR_SCRIPT])
        setup.parley = {"parley": "http://127.0.0.1:1"}
        discover_children(setup, expected=2, within_s=20)
        supervisor = procs.pid("parley")
        assert sorted(setup.children) == ["parley-web", "parley-worker-1"]
        assert sorted(setup.children.values()) == children(supervisor)
        assert setup.parley_pids[SUPERVISOR] == supervisor and len(setup.parley_pids) == 3
        assert readers_expected(setup) == 1    # the worker child; the web child runs none
        check_parley(setup)
        worker = setup.children["parley-worker-1"]
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while parent_of(worker) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(RuntimeError, match=f"parley-worker-1 \\(pid {worker}, a child of parley\\) is gone"):
            check_parley(setup)
    finally:
        procs.stop_all()


def test_too_few_children_is_a_clear_error(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    setup = Setup(work_dir=tmp_path, procs=procs)
    try:
        procs.start("parley", [sys.executable, "-c", "import time; time.sleep(60)"])
        with pytest.raises(RuntimeError, match=r"has 0 of 2 children after 0\.3 s"):
            discover_children(setup, expected=2, within_s=0.3)
    finally:
        procs.stop_all()


def test_the_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args([]).layout == "default"
    assert parse_args(["--processes", "2"]).processes == 2
    for wrong, said in ((["--layout", "split", "--processes", "2"], "--processes N (at least 1) goes with"),
                        (["--processes", "0"], "--processes N (at least 1) goes with"),
                        (["--phases", "ack,cpus"], "unknown phase(s) cpus")):
        with pytest.raises(SystemExit):
            parse_args(wrong)
        assert said in capsys.readouterr().err


def test_the_cpu_phase_has_conversations_of_its_own() -> None:
    for plan in (Plan(), QUICK):
        runs = [cpu_users(plan, run) for run in range(plan.repeats)]
        users = [user for blocks in runs for block in blocks for user in block]
        assert len(users) == len(set(users)) == plan.repeats * plan.cpu_rounds * plan.cpu_conversations
        assert plan.cpu_rounds * plan.cpu_conversations <= RUN_STRIDE
        numbers = sorted(int(user.removeprefix("+1415")) for user in users)
        assert numbers[0] >= CPU_USERS and numbers[-1] < CPU_USERS + plan.repeats * RUN_STRIDE
        assert TURN_USERS + (plan.repeats + 1) * RUN_STRIDE <= 4_000_000 <= CPU_USERS   # turns, profile, flow apart
