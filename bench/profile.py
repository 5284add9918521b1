"""Profiling Parley under the benchmark's load with py-spy (``--py-spy DIR``), and a summary of what it recorded."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .procs import ROOT, Procs
from .stack import SUPERVISOR, Setup

_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def _frame(text: str) -> str:
    found = _FRAME.match(text)
    if not found:
        return text
    path = re.sub(r"^.*/(site-packages|python3\.\d+)/", "", found.group(2)).removeprefix(str(ROOT) + "/")
    return f"{found.group(1)} ({path})"


def _package(frame: str) -> str:
    """The top-level package of a shortened frame: ``openai``, ``asyncio``, ``service``..."""
    path = frame.rpartition(" (")[2].rstrip(")")
    return path.split("/")[0].removesuffix(".py") if "/" in path else path.removesuffix(".py")


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """py-spy's collapsed stacks, in % of samples: the functions with the most own time; the innermost Parley
    function (``service/``) under each sample, i.e. what Parley code the time is spent for; the package of
    the function running."""
    own: Counter[str] = Counter()
    parley: Counter[str] = Counter()
    package: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += n
        package[_package(frames[-1])] += n
        mine = [f for f in frames if "(service/" in f]
        parley[mine[-1] if mine else "(no Parley frame: event loop, aiohttp server, truncated stack)"] += n

    def pct(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / max(total, 1), 1)) for name, n in counter.most_common(top)]

    return {"samples": total, "self_pct": pct(own), "innermost_parley_frame_pct": pct(parley),
            "package_pct": pct(package)}


def summarize_one(procs: Procs, spy: str, target: str, out: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    try:
        summary.update(file=str(out), **summarize_profile(out))
    except OSError:
        summary["error"] = f"py-spy wrote nothing:\n{procs.tail(spy)}"
    print(f"  py-spy profile of {target} ({summary.get('samples')} samples) in {out}:", file=sys.stderr)
    for key in ("innermost_parley_frame_pct", "self_pct", "package_pct"):
        print(f"  {key}:", file=sys.stderr)
        for name, pct in summary.get(key, [])[:15]:
            print(f"    {pct:5.1f}%  {name}", file=sys.stderr)
    return summary


@contextlib.asynccontextmanager
async def profiled(setup: Setup, out: Path | None) -> AsyncIterator[dict[str, Any]]:
    """Record Parley's stacks with py-spy (``--gil``: the thread running Python) while the block runs; the
    yielded dict is filled with the summary afterwards. Without ``out``, nothing. With several Parley processes,
    one py-spy each, to ``<out stem>-<process>.txt``, and the summary has one entry per process."""
    summary: dict[str, Any] = {}
    if out is None:
        yield summary
        return
    procs = setup.procs
    targets = {name: pid for name, pid in setup.parley_pids.items() if name != SUPERVISOR}   # it only supervises
    single = list(targets) == ["parley"]
    spies = {name: ("py-spy" if single else f"py-spy-{name}",
                    out if single else out.with_name(f"{out.stem}-{name}{out.suffix}")) for name in targets}
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    try:
        for name, (spy, path) in spies.items():
            procs.start(spy, [py_spy, "record", "--pid", str(targets[name]), "--rate", "100", "--gil",
                              "--format", "raw", "--output", str(path)])
        await asyncio.sleep(1.0)
        for spy, _ in spies.values():
            procs.check(spy)
        yield summary
    finally:
        await asyncio.gather(*(asyncio.to_thread(procs.stop, spy, 15.0, signal.SIGINT) for spy, _ in spies.values()))
    found = {name: summarize_one(procs, spy, name, path) for name, (spy, path) in spies.items()}
    summary.update(found["parley"] if single else found)
