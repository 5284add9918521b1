"""A real, throwaway Redis Cluster on this machine, for tests.

``LocalCluster`` starts ``masters`` ``redis-server`` processes (no replicas) in cluster mode on free loopback
ports, gives each an even share of the 16384 hash slots, introduces them to each other, and waits until every
node reports a healthy cluster. On exit it stops them all (SIGTERM, then SIGKILL) and reaps them, also when
startup failed halfway::

    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    with LocalCluster(tmp_path) as cluster:
        client = redis.asyncio.cluster.RedisCluster.from_url(cluster.url)

The cluster is configured by speaking RESP to the nodes over plain sockets (CLUSTER ADDSLOTSRANGE, CLUSTER MEET,
CLUSTER INFO, CLUSTER NODES), so neither ``redis-cli`` nor any particular redis-py version is needed. Each node
writes its log (``node-<port>.log``) and cluster state file (``nodes-<port>.conf``) into ``work_dir``; the
startup error names the logs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO, NoReturn

SLOTS = 16384
BUS_PORT_OFFSET = 10000
"""A node's cluster bus listens on its port + 10000 (the default, which these nodes keep)."""

SERVER = "redis-server"


def missing_reason() -> str | None:
    """Why a local cluster cannot be started here, or None when it can."""
    if shutil.which(SERVER) is None:
        return f"{SERVER} is not on PATH; the Redis Cluster tests need it"
    return None


class ClusterStartupError(RuntimeError):
    """The cluster did not come up; the message says how far it got and where the node logs are."""


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """The 16384 slots split into ``masters`` contiguous, inclusive ranges whose sizes differ by at most one."""
    if masters < 1:
        raise ValueError("a cluster needs at least one master")
    base, extra = divmod(SLOTS, masters)
    ranges = []
    start = 0
    for index in range(masters):
        size = base + (1 if index < extra else 0)
        ranges.append((start, start + size - 1))
        start += size
    return ranges


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free on ``host``, each with its cluster bus port (port + 10000) free too.

    The sockets are held until all ports are chosen, so no port (or bus port) is picked twice; another process
    could still take one before the nodes bind it, which is as good as picking free ports gets.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(count * 50):
            if len(ports) == count:
                break
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(probe)
            probe.bind((host, 0))
            port = probe.getsockname()[1]
            if port + BUS_PORT_OFFSET > 65535:
                continue
            bus = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(bus)
            try:
                bus.bind((host, port + BUS_PORT_OFFSET))
            except OSError:
                continue
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    if len(ports) < count:
        raise ClusterStartupError(f"found only {len(ports)} of {count} free port pairs (port, port + 10000)")
    return ports


class RespError(Exception):
    """An error reply (``-ERR ...``) from a node."""


def command(port: int, *args: str | int, host: str = "127.0.0.1", timeout: float = 2.0) -> str | int | None:
    """Send one command to the node at ``host:port`` on a fresh connection and return its reply.

    Enough RESP2 for the cluster setup: simple strings, errors (raised as ``RespError``), integers and bulk
    strings (decoded as UTF-8; a null bulk string is None). Array replies are not supported.
    """
    parts = [str(arg).encode() for arg in args]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)
    with socket.create_connection((host, port), timeout=timeout) as sock, sock.makefile("rb") as reply:
        sock.sendall(request)
        line = reply.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"{host}:{port} closed the connection mid-reply")
        kind, body = line[:1], line[1:-2].decode()
        if kind == b"+":
            return body
        if kind == b"-":
            raise RespError(body)
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            if size < 0:
                return None
            data = reply.read(size + 2)
            if len(data) != size + 2:
                raise ConnectionError(f"{host}:{port} closed the connection mid-reply")
            return data[:-2].decode()
        raise RespError(f"unsupported reply type {kind!r} from {host}:{port}")


def cluster_info(port: int, host: str = "127.0.0.1") -> dict[str, str]:
    """CLUSTER INFO of one node as a dict (``{"cluster_state": "ok", ...}``)."""
    text = command(port, "CLUSTER", "INFO", host=host)
    fields = (line.split(":", 1) for line in str(text).splitlines() if ":" in line)
    return {key: value for key, value in fields}


def cluster_nodes(port: int, host: str = "127.0.0.1") -> list[list[str]]:
    """CLUSTER NODES of one node: one row of fields per node it knows (id, ip:port@bus, flags, ...)."""
    text = command(port, "CLUSTER", "NODES", host=host)
    return [line.split() for line in str(text).splitlines() if line.strip()]


class LocalCluster:
    """``masters`` local ``redis-server`` processes forming one Redis Cluster, for use as a context manager.

    ``ports`` are the nodes' client ports and ``url`` points a cluster client at the first node. ``timeout``
    bounds the whole startup (processes up, slots assigned, everyone agreeing); ``stop_timeout`` is how long a
    node gets after SIGTERM before it is killed. An instance starts once; make a new one for another cluster.

    Startup takes about 2.1 s, nearly all of it Redis itself: a master reports ``cluster_state:ok`` no sooner
    than 2 s after it starts (CLUSTER_WRITABLE_DELAY, fixed in the server), however fast the slots and the
    handshakes are done.
    """

    def __init__(
        self,
        work_dir: Path,
        masters: int = 3,
        *,
        host: str = "127.0.0.1",
        timeout: float = 20.0,
        stop_timeout: float = 3.0,
        node_timeout_ms: int = 5000,
    ) -> None:
        if masters < 1:
            raise ValueError("a cluster needs at least one master")
        self.work_dir = Path(work_dir)
        self.masters = masters
        self.host = host
        self.timeout = timeout
        self.stop_timeout = stop_timeout
        self.node_timeout_ms = node_timeout_ms
        self.ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    @property
    def url(self) -> str:
        """``redis://host:<first port>/0``, for ``RedisCluster.from_url``."""
        if not self.ports:
            raise RuntimeError("the cluster has not been started")
        return f"redis://{self.host}:{self.ports[0]}/0"

    @property
    def log_files(self) -> list[Path]:
        """Each node's stdout and stderr, in port order."""
        return [self.work_dir / f"node-{port}.log" for port in self.ports]

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the nodes and form the cluster; on any failure, stop what was started and raise."""
        if self.processes:
            raise RuntimeError("the cluster is already started")
        deadline = time.monotonic() + self.timeout
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self.ports = free_ports(self.masters, self.host)
            for port in self.ports:
                self._spawn(port)
            for port in self.ports:
                self._wait_until_up(port, deadline)
            for epoch, (port, (first, last)) in enumerate(zip(self.ports, slot_ranges(self.masters), strict=True), 1):
                # Distinct config epochs up front (as redis-cli does), so no epoch collision needs resolving.
                command(port, "CLUSTER", "SET-CONFIG-EPOCH", epoch, host=self.host)
                command(port, "CLUSTER", "ADDSLOTSRANGE", first, last, host=self.host)
            # Every pair meets directly: gossip alone would get there too, but takes up to a second longer.
            for index, port in enumerate(self.ports):
                for other in self.ports[index + 1:]:
                    command(port, "CLUSTER", "MEET", self.host, other, host=self.host)
            self._wait_until_formed(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM every node's process group, SIGKILL those still alive after ``stop_timeout``, reap them all."""
        for process in self.processes:
            if process.poll() is None:
                _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for process in self.processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        for log in self._logs:
            log.close()
        self._logs = []

    def _spawn(self, port: int) -> None:
        # A state file left by an earlier cluster on the same port would bring back its slots and peers.
        (self.work_dir / f"nodes-{port}.conf").unlink(missing_ok=True)
        log = open(self.work_dir / f"node-{port}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        argv = [
            SERVER,
            "--port", str(port),
            "--bind", self.host,
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.work_dir / f"nodes-{port}.conf"),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--dir", str(self.work_dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
        ]  # fmt: skip
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)

    def _wait_until_up(self, port: int, deadline: float) -> None:
        process = self.processes[self.ports.index(port)]
        while True:
            if process.poll() is not None:
                self._fail(f"the node on port {port} exited with status {process.returncode}")
            try:
                if command(port, "PING", host=self.host, timeout=0.5) == "PONG":
                    return
            except (OSError, RespError):
                pass
            if time.monotonic() > deadline:
                self._fail(f"the node on port {port} did not answer PING")
            time.sleep(0.02)

    def _wait_until_formed(self, deadline: float) -> None:
        while True:
            problems = self._problems()
            if not problems:
                return
            if time.monotonic() > deadline:
                self._fail("the cluster did not form: " + "; ".join(problems))
            time.sleep(0.05)

    def _problems(self) -> list[str]:
        """What still keeps the cluster from being ready, per node; empty when it is."""
        problems = []
        for index, port in enumerate(self.ports):
            if self.processes[index].poll() is not None:
                problems.append(f"{port}: exited with status {self.processes[index].returncode}")
                continue
            try:
                info = cluster_info(port, self.host)
                rows = cluster_nodes(port, self.host)
            except (OSError, RespError) as error:
                problems.append(f"{port}: {error}")
                continue
            if info.get("cluster_state") != "ok":
                problems.append(f"{port}: cluster_state:{info.get('cluster_state')}")
            if info.get("cluster_slots_assigned") != str(SLOTS):
                problems.append(f"{port}: cluster_slots_assigned:{info.get('cluster_slots_assigned')}")
            healthy = [row for row in rows if _is_healthy_master(row)]
            if len(healthy) != self.masters:
                problems.append(f"{port}: knows {len(healthy)} of {self.masters} masters")
        return problems

    def _fail(self, what: str) -> NoReturn:
        logs = ", ".join(str(path) for path in self.log_files)
        raise ClusterStartupError(f"the local Redis Cluster did not start within {self.timeout:g} s: {what}. "
                                  f"Node logs: {logs}")


def _is_healthy_master(row: list[str]) -> bool:
    """A CLUSTER NODES row for a connected master with an address, not failing and not mid-handshake."""
    if len(row) < 8:
        return False
    flags = set(row[2].split(","))
    return ("master" in flags and row[7] == "connected" and not row[1].startswith(":")
            and not flags & {"fail", "fail?", "handshake", "noaddr"})


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the node's process group (it leads its own session); fall back to the process itself."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        process.send_signal(sig)
