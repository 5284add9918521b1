"""The benchmark's processes: each in its own process group, on 127.0.0.1, stopped on exit whatever happens."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all CPUs, everything but idle and iowait), from ``/proc/stat``."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    guest = sum(ticks[8:10]) if len(ticks) > 9 else 0     # guest time is counted in user time already
    return (sum(ticks) - idle - guest) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (``/proc/<pid>/task/*/children``: each thread lists the children it
    started), oldest first; [] when it has none or is gone."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError):
            found.update(int(child) for child in (task / "children").read_text().split())
    return sorted(found)


def parent_of(pid: int) -> int | None:
    """The parent process id of ``pid`` (None when it is gone, or dead and not reaped yet: a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, parent = f.read().rsplit(")", 1)[1].split()[:2]
    except (OSError, ValueError):
        return None
    return None if state in ("Z", "X") else int(parent)


def environ(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with ({} when it cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


def memory_kb(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of ``pid``, in kB."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    found[name] = int(value.split()[0])
    except OSError:
        pass
    return found


@dataclass
class Procs:
    """Started processes by name; ``stop_all`` ends each one's whole process group.

    ``handle_signals`` makes SIGINT and SIGTERM raise ``KeyboardInterrupt``, except while a process is being
    started: then the signal is held until the new process is registered here, so none can escape
    ``stop_all``."""

    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _starting: bool = field(default=False, init=False, repr=False)   # inside ``start``: signals are held
    _held: int | None = field(default=None, init=False, repr=False)

    def handle_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):   # SIGINT also when started with it ignored (a background job)
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._starting:
            self._held = signum
            return
        raise KeyboardInterrupt(f"signal {signum}")

    @contextmanager
    def _registering(self) -> Iterator[None]:
        self._starting = True
        try:
            yield
        finally:
            self._starting = False
        if self._held is not None:
            signum, self._held = self._held, None
            raise KeyboardInterrupt(f"signal {signum}")

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cpus: set[int] | None = None) -> subprocess.Popen[bytes]:
        if name in self.procs:
            raise ValueError(f"{name} is already running")
        log = (self.log_dir / f"{name}.log").open("wb")
        try:
            with self._registering():
                proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                self.procs[name] = proc
        finally:
            log.close()
        if cpus:
            os.sched_setaffinity(proc.pid, cpus)
        return proc

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def check(self, name: str) -> None:
        code = self.procs[name].poll()
        if code is not None:
            raise RuntimeError(f"{name} exited with {code}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, name: str, timeout_s: float = 6.0, first: signal.Signals = signal.SIGTERM) -> None:
        proc = self.procs.get(name)
        if proc is None:
            return
        for sig, wait_s in ((first, timeout_s), (signal.SIGKILL, 3.0)):
            if proc.returncode is not None:   # reaped already (by ``check``): its group id may be reused
                break
            try:
                # The process group: the process and anything it started. Sent only while the leader is not
                # reaped yet, so the group id cannot have been reused.
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        self.procs.pop(name, None)   # only now: interrupted before this, it is still there for stop_all

    def stop_together(self, names: Iterable[str], timeout_s: float = 6.0) -> None:
        """Stop several processes at once: SIGTERM to every group, one shared wait, then SIGKILL what is left."""
        live = {name: self.procs[name] for name in names if name in self.procs}
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 3.0)):
            for proc in live.values():
                if proc.returncode is None:     # not reaped yet: its group id cannot have been reused
                    with suppress(ProcessLookupError):
                        os.killpg(proc.pid, sig)
            deadline = time.monotonic() + wait_s
            for proc in live.values():
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            if all(proc.returncode is not None for proc in live.values()):
                break
        for name in live:
            self.procs.pop(name, None)

    def stop_all(self, first: Iterable[str] = ()) -> None:
        """``first`` together (the processes that use the others), then the rest one by one, newest first.
        SIGINT and SIGTERM are ignored meanwhile, so a second Ctrl-C cannot cut the cleanup short (each wait is
        bounded)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        self.stop_together(first)
        for name in reversed(list(self.procs)):
            self.stop(name)


def wait_http(procs: Procs, name: str, url: str, within_s: float = 30.0) -> None:
    """Wait until ``url`` answers 200 (bounded), failing early if the process died."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        procs.check(name)
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer {url} within {within_s} s:\n{procs.tail(name)}")


def wait_redis(procs: Procs, name: str, port: int, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        procs.check(name)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not answer PING within {within_s} s:\n{procs.tail(name)}")


def readers(client: redis.Redis, streams: list[str], group: str) -> int:
    """How many consumers of ``group`` read ``streams``: the group's consumers (the most on any one stream), or
    (more, on fresh streams) the connections blocked in ``XREADGROUP`` right now. Before Redis 7.2 a blocked
    ``XREADGROUP`` on an empty stream does not create its consumer; each worker process has at most one such
    connection (one read loop, one ``XREADGROUP`` for all its streams)."""
    consumers = 0
    for stream in streams:
        with suppress(redis.ResponseError):   # NOGROUP until the first worker created the group
            consumers = max(consumers, len(client.xinfo_consumers(stream, group)))
    blocked = sum(1 for c in client.client_list() if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", ""))
    return max(consumers, blocked)


def wait_consumers(procs: Procs, names: list[str], port: int, streams: list[str], group: str,
                   within_s: float = 20.0, expected: int | None = None) -> None:
    """Wait (bounded) until ``expected`` readers (default: one per name in ``names``, the processes that run
    workers) read ``streams`` in consumer group ``group`` (a fresh Redis: every reader is one of Parley's),
    failing early if one of ``names`` died."""
    wanted = len(names) if expected is None else expected
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0, decode_responses=True)
    deadline = time.monotonic() + within_s
    seen = 0
    try:
        while time.monotonic() < deadline:
            for name in names:
                procs.check(name)
            seen = readers(client, streams, group)
            if seen >= wanted:
                return
            time.sleep(0.05)
    finally:
        client.close()
    tails = "\n".join(f"--- {name} ---\n{procs.tail(name)}" for name in names)
    raise RuntimeError(f"{seen} of {wanted} readers in consumer group {group} within {within_s} s:\n{tails}")


def start_redis(procs: Procs, name: str, work_dir: Path, cpus: set[int] | None = None) -> int:
    port = free_port()
    data = work_dir / name
    data.mkdir()
    procs.start(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                       "--appendonly", "no", "--dir", str(data), "--protected-mode", "yes"], cpus=cpus)
    wait_redis(procs, name, port)
    return port


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
