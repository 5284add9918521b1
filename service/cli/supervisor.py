"""``parley serve`` on several cores: a supervisor process and its children.

With ``PARLEY_PROCESSES`` (or ``serve --processes N``) at 2 or more, and by default on a machine with several
cores (as many processes as cores: ``default_processes``), ``parley serve`` runs no app itself. It starts one
*web* child (``serve --web-only``: the webhooks, the API and the console on ``PARLEY_HOST:PARLEY_PORT``) and N-1
*worker* children (``worker``: the workers and the scheduler, with no listener), so that a webhook never waits
behind turns on a busy event loop. Each child is a
fresh ``python -m service`` process (not a fork: an app holds sockets and threads), with ``PARLEY_PROCESS_NAME``
(``web``, ``worker-1``...) naming it in its log lines, and ``--supervised PID``, which makes it die with the
supervisor (``die_with_parent``) and keeps a worker child off the port.

The supervisor:

- checks the settings and the agent files first, so a mistake fails at once, with the message one process
  gives;
- starts the embedded Valkey once when ``REDIS_URL`` is unset and hands its URL to every child, and makes up
  the run's API key once when none is set (children of one run must share it), printing it as one process does;
- restarts a child that exits while it is not stopping, after ``BACKOFF_FIRST_S``, doubling per recent death of
  that child up to ``BACKOFF_MAX_S``; after more than ``RESTARTS_MAX`` deaths within ``RESTARTS_WINDOW_S`` (a
  crash loop: a port taken, Redis refusing) it stops the others and exits 1;
- kills a child whose event loop has not run for ``PARLEY_HANG_TIMEOUT_S`` (a call that never returns, a loop that
  never yields: it would answer nothing, and never exit on its own), which then counts as an exit and is restarted
  as one: each child writes a byte down a pipe of its own every ``HEARTBEAT_S`` from its event loop (``beat``), and
  the supervisor notes when it last heard (``Heartbeat``); a child that has not started beating gets
  ``STARTUP_S`` more (it may be loading agent files);
- on SIGTERM or SIGINT sends SIGTERM to every child, gives them ``PARLEY_DRAIN_TIMEOUT_S`` + ``STOP_MARGIN_S`` to
  drain, kills what is left, stops the embedded Valkey, and exits 0 when every child drained (1 otherwise).

Children write to the supervisor's stderr, one whole JSON line per ``write(2)`` (``service/logs.py``).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field

from service import logs
from service.errors import ConfigError
from service.settings import Settings
from service.storage.connection import server_url

log = logging.getLogger(__name__)

WORKER_NICE = 5               # worker children run this much below the web child's priority (yield_to_web)
RESTARTS_MAX = 5             # deaths of children within RESTARTS_WINDOW_S that are restarted; one more stops all
RESTARTS_WINDOW_S = 60.0
BACKOFF_FIRST_S = 0.5        # before a child is started again, doubling per death of that child in the window
BACKOFF_MAX_S = 2.0
STOP_MARGIN_S = 5.0          # past PARLEY_DRAIN_TIMEOUT_S, before a child still draining is killed
PR_SET_PDEATHSIG = 1         # prctl(2)
HEARTBEAT_S = 0.5            # how often a child tells the supervisor its event loop runs
STARTUP_S = 60.0             # more silence allowed to a child before its first beat
# How a child that stopped cleanly exits: 0 once drained, or killed by the SIGTERM itself while it was still
# starting (before its handlers were installed: nothing in flight).
STOPPED = frozenset({0, -signal.SIGTERM})


def default_processes(cores: int | None = None) -> int:
    """``PARLEY_PROCESSES=0``: as many processes as cores (``cores``, else ``usable_cores``): the web child and a
    worker child per other core; one core, one process. ``bench.run`` chose it on the 2-core development machine,
    with every process of the machine busy (load generator, fakes and Redis beside Parley): a worker child per core
    plus the web child, one process more than cores, spent about a sixth more CPU per text (follow-up texts 1.82-1.92
    x the floor's CPU per turn, against 1.60-1.61 with one worker: more wake-ups for smaller batches, and a turn whose
    previous turn ran in the other worker reads its chat in a second round trip), and bought nothing the targets ask
    for: at 200 texts/s with a 1.5 s LLM the web + one worker answered with a reply p99 of 1.56 s and a webhook p99 of
    4 ms, and at 400 texts/s all 400 a second (p99 2.2 s), a worker running up to ``PARLEY_WORKERS`` (1,024) turns at
    once."""
    return cores or usable_cores()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container's cpuset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


@dataclass
class Child:
    """One child: its name (its log lines' ``process``), its ``parley`` arguments, and its recent deaths."""

    name: str
    args: list[str]
    deaths: deque[float] = field(default_factory=deque)


def children(processes: int) -> list[Child]:
    """The web child and ``processes - 1`` worker children, each told the supervisor's pid."""
    parent = ["--supervised", str(os.getpid())]
    return [Child("web", ["serve", "--web-only", *parent]),
            *(Child(f"worker-{n}", ["worker", *parent]) for n in range(1, processes))]


def run(settings: Settings, processes: int) -> int:
    """Supervise ``processes`` children (at least 2) until SIGTERM or SIGINT, or until they keep dying; return
    the exit status."""
    logs.configure(settings.log_level, twilio_level=settings.twilio_log_level, process="supervisor")
    _check_files(settings)
    return asyncio.run(_supervise(settings, processes))


def _check_files(settings: Settings) -> None:
    """Load the agent files and knowledge-base folders as each child will first, so that a mistake is reported
    once, here; in a forked process, so the supervisor does not keep what loading them imports (most of Parley:
    about 70 MB it would hold for nothing)."""
    pid = os.fork()
    if pid == 0:   # the child: report, and leave without running the parent's exit handlers
        status = 1
        try:
            from service.catalog import agent_files
            from service.knowledge import folders
            agent_files.load(settings)
            folders.load(settings)
            status = 0
        except ConfigError as exc:
            print(exc, file=sys.stderr, flush=True)
        except BaseException:
            log.exception("checking the agent files failed")
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(wait_status) != 0:
        raise SystemExit(1)


async def _supervise(settings: Settings, processes: int) -> int:
    async with server_url(settings) as url:
        env = {**os.environ, "REDIS_URL": url, **_run_key(settings)}   # the children read the same settings
        supervisor = Supervisor(children(processes), env, stop_within_s=settings.drain_timeout_s + STOP_MARGIN_S,
                                hang_timeout_s=settings.hang_timeout_s)
        log.info("supervisor started", extra={"processes": processes, "pid": os.getpid()})
        status = await supervisor.run()
    log.info("supervisor stopped", extra={"exit_code": status})
    return status


def _run_key(settings: Settings) -> dict[str, str]:
    """With no API key set, the one ``parley serve`` makes up, for every child (``PARLEY_API_KEY``), printed."""
    if settings.webhook_key() is not None:
        return {}
    _, key = settings.key_roles(split=False)
    print(f"PARLEY_API_KEY is not set (nor PARLEY_API_KEYS): an admin key that also signs events was made up for "
          f"this run; this run's API key is: {key}", file=sys.stderr, flush=True)
    return {"PARLEY_API_KEY": key}


class Supervisor:
    """Keeps its children running until told to stop (``stopping``), then drains them."""

    def __init__(self, children: list[Child], env: Mapping[str, str], *, stop_within_s: float,
                 hang_timeout_s: float = 0.0) -> None:
        self.children = children
        self.stopping = asyncio.Event()
        self.failed = False
        self._env = env
        self._stop_within_s = stop_within_s
        self._hang_timeout_s = hang_timeout_s   # 0: children are not watched for hangs
        self._deaths: deque[float] = deque()   # every child's, within RESTARTS_WINDOW_S

    async def run(self) -> int:
        """0 when every child drained at the stop; 1 when one did not, or children kept dying."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        drained = await asyncio.gather(*(self._keep(child) for child in self.children))
        return 0 if all(drained) and not self.failed else 1

    def _stop(self, sig: signal.Signals) -> None:
        if not self.stopping.is_set():
            log.info("stopping: SIGTERM to every child", extra={"signal": sig.name})
        self.stopping.set()

    async def _keep(self, child: Child) -> bool:
        """Run ``child``, again each time it exits, until the stop; whether it drained then."""
        while not self.stopping.is_set():
            heartbeat = Heartbeat() if self._hang_timeout_s else None
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "service", *child.args, *(heartbeat.args if heartbeat else ()),
                    stdin=asyncio.subprocess.DEVNULL, env={**self._env, "PARLEY_PROCESS_NAME": child.name},
                    pass_fds=heartbeat.pass_fds if heartbeat else ())
            except OSError as exc:
                if heartbeat is not None:
                    heartbeat.close()
                log.error("a child could not be started: stopping", extra={"child": child.name, "error": str(exc)})
                self.failed = True
                self.stopping.set()
                return True
            log.info("child started", extra={"child": child.name, "pid": process.pid})
            if heartbeat is not None:
                heartbeat.handed_over()
            exited = asyncio.ensure_future(process.wait())
            stopped = asyncio.ensure_future(self.stopping.wait())
            watch = asyncio.ensure_future(self._watch(child, process, heartbeat)) if heartbeat else None
            try:
                await asyncio.wait((exited, stopped), return_when=asyncio.FIRST_COMPLETED)
                if not exited.done():
                    return await self._drain(child, process, exited)
            finally:   # the child has exited
                stopped.cancel()
                if watch is not None:
                    watch.cancel()
                if heartbeat is not None:
                    heartbeat.close()
            if self.stopping.is_set():   # it was told to stop (a terminal's Ctrl-C reaches the whole group)
                return process.returncode in STOPPED
            if not self._restartable(child, process):
                return True
            with suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self._backoff_s(child))
        return True

    async def _watch(self, child: Child, process: asyncio.subprocess.Process, heartbeat: Heartbeat) -> None:
        """Kill ``process`` once its heartbeat has been silent past the hang timeout (its exit then restarts it), until
        the stop."""
        started = time.monotonic()
        while not self.stopping.is_set():   # a child told to stop has the drain's timeout instead
            await asyncio.sleep(HEARTBEAT_S)
            heard = heartbeat.heard
            silent = time.monotonic() - (heard if heard is not None else started)
            if silent > self._hang_timeout_s + (0.0 if heard is not None else STARTUP_S):
                log.error("child unresponsive: killed", extra={"child": child.name, "pid": process.pid,
                                                               "silent_s": round(silent, 1), "beat": heard is not None})
                with suppress(ProcessLookupError):
                    process.kill()
                return

    def _restartable(self, child: Child, process: asyncio.subprocess.Process) -> bool:
        """Count a child's death; whether it may be started again (not a crash loop)."""
        now = time.monotonic()
        for deaths in (self._deaths, child.deaths):
            deaths.append(now)
            while deaths[0] < now - RESTARTS_WINDOW_S:
                deaths.popleft()
        exit_ = {"child": child.name, "pid": process.pid, **_exit(process.returncode)}
        if len(self._deaths) > RESTARTS_MAX:
            log.error("children keep dying: stopping the others and exiting 1",
                      extra={**exit_, "deaths": len(self._deaths), "within_s": RESTARTS_WINDOW_S})
            self.failed = True
            self.stopping.set()
            return False
        log.warning("child exited: restarting it", extra={**exit_, "after_s": self._backoff_s(child)})
        return True

    @staticmethod
    def _backoff_s(child: Child) -> float:
        return float(min(BACKOFF_FIRST_S * 2 ** (len(child.deaths) - 1), BACKOFF_MAX_S))

    async def _drain(self, child: Child, process: asyncio.subprocess.Process, exited: asyncio.Future[int]) -> bool:
        """SIGTERM to ``process``; kill it if it has not exited within the drain timeout and margin."""
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self._stop_within_s):
                code = await asyncio.shield(exited)
        except TimeoutError:
            log.warning("child still draining: killed", extra={"child": child.name, "pid": process.pid,
                                                              "waited_s": self._stop_within_s})
            with suppress(ProcessLookupError):
                process.kill()
            await exited
            return False
        if code not in STOPPED:
            log.warning("child exited badly while stopping", extra={"child": child.name, "pid": process.pid,
                                                                     **_exit(code)})
        return code in STOPPED


class Heartbeat:
    """A pipe from one child to the supervisor: the child writes a byte down it every ``HEARTBEAT_S`` (``beat``),
    and ``heard`` is when the supervisor last read one (``time.monotonic``; None before the first)."""

    def __init__(self) -> None:
        self._read_end, self._write_end = os.pipe()
        os.set_blocking(self._read_end, False)
        self.heard: float | None = None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._read_end, self._read)
        self._handed_over = False

    @property
    def args(self) -> list[str]:
        """What tells the child where to write."""
        return ["--heartbeat", str(self._write_end)]

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self._write_end,)

    def handed_over(self) -> None:
        """The child has the write end: the supervisor's copy is closed (the pipe ends when the child does)."""
        os.close(self._write_end)
        self._handed_over = True

    def _read(self) -> None:
        try:
            data = os.read(self._read_end, 4096)
        except BlockingIOError:
            return
        if data:
            self.heard = time.monotonic()
        else:   # every writer is gone: the child exited
            self._loop.remove_reader(self._read_end)

    def close(self) -> None:
        """Once, when the child has exited (or could not be started)."""
        self._loop.remove_reader(self._read_end)
        os.close(self._read_end)
        if not self._handed_over:
            os.close(self._write_end)


async def beat(fd: int) -> None:
    """In a child: tell the supervisor, every ``HEARTBEAT_S``, that this process's event loop runs, until the
    supervisor is gone (the child then dies with it: ``die_with_parent``)."""
    os.set_blocking(fd, False)
    while True:
        try:
            os.write(fd, b".")
        except BlockingIOError:   # the supervisor is behind on reading: it has heard enough
            pass
        except BrokenPipeError:
            return
        await asyncio.sleep(HEARTBEAT_S)


def _exit(returncode: int | None) -> dict[str, object]:
    if returncode is not None and returncode < 0:
        return {"signal": signal.Signals(-returncode).name}
    return {"exit_code": returncode}


def yield_to_web() -> None:
    """Run this worker child at ``WORKER_NICE``: when the machine's cores are all busy, the web child answers
    Twilio first and turns wait (they wait on the LLM anyway), instead of the webhook waiting behind turns."""
    with suppress(OSError):   # a platform or container that refuses: the child runs at the usual priority
        os.nice(WORKER_NICE)


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGTERM this process when its parent dies (SIGKILL included), so that no child of
    ``parley serve`` outlives the supervisor ``parent``; exit now if it is already gone. Linux only: elsewhere
    a supervisor killed outright leaves its children running."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed", extra={"errno": ctypes.get_errno()})
    if os.getppid() != parent:
        raise SystemExit(f"the supervisor (pid {parent}) is gone")
