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
from dataclasses import dataclass, field
from pathlib import Path

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
    """Started processes by name; ``stop_all`` ends each one's whole process group."""

    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cpus: set[int] | None = None) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("wb")
        try:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        self.procs[name] = proc
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
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        for sig, wait_s in ((first, timeout_s), (signal.SIGKILL, 3.0)):
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

    def stop_all(self) -> None:
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
