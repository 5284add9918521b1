"""How ``parley serve`` and ``parley worker`` serve HTTP: aiohttp's ``AppRunner`` on one TCP listener, within
the bounds ``Settings`` gives.

aiohttp bounds an idle connection (``keepalive_timeout``, which also bounds how long a client may take to send
a request's head: both wait on one timer) and the size of a request's head (``max_line_size``,
``max_field_size``, ``max_headers``). A request's body is bounded by the handlers (``PARLEY_BODY_TIMEOUT_S``).
aiohttp does not bound how many connections are open at once, and each holds a file descriptor: idle or
trickling clients could take the descriptors Redis, Twilio and the LLM need. ``CappedSite`` counts them; while
``PARLEY_MAX_CONNECTIONS`` are open, a new one is answered 503 and closed at once. A slot frees when a
connection closes, which an idle one does after ``PARLEY_KEEPALIVE_TIMEOUT_S``.

``run`` stands in for ``web.run_app``, which builds its own site: the same loop, signals and shutdown, with
this site, or with none (``listen=False``: a worker child of ``parley serve``'s supervisor, beside a web child
that holds the port). Once a signal has started the drain, further SIGINTs and SIGTERMs are ignored: systemd
signals every process of a unit, a terminal's Ctrl-C every process of its group, and the supervisor forwards
its own, so a child is often told twice; the second must not cut the drain short.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable
from contextlib import suppress

from aiohttp import web
from yarl import URL

from service.settings import Settings

log = logging.getLogger(__name__)

# aiohttp's own limits on a request's head, named: a request line or a header of at most 8 KiB, 128 headers.
MAX_LINE_BYTES = 8190
MAX_FIELD_BYTES = 8190
MAX_HEADERS = 128
_TOO_MANY = b"too many connections; try again\n"
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\nConnection: close\r\n"
        b"Content-Length: " + str(len(_TOO_MANY)).encode() + b"\r\n\r\n" + _TOO_MANY)
REFUSALS_LOGGED_EVERY_S = 10.0


def run(app: web.Application, settings: Settings, loop: asyncio.AbstractEventLoop, *, listen: bool = True) -> None:
    """Serve ``app`` on ``PARLEY_HOST:PARLEY_PORT`` (with ``listen``; else on no port) until SIGINT or SIGTERM,
    then stop as ``web.run_app`` does: the listener closes, requests in flight get ``PARLEY_DRAIN_TIMEOUT_S``,
    the app's cleanup contexts run."""
    main = loop.create_task(_serve(app, settings, listen=listen))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):   # the signal handlers AppRunner installs raise GracefulExit
        pass
    finally:
        _ignore_signals(loop)   # AppRunner.cleanup removes these handlers when the drain is over
        if not main.done():
            main.cancel()
            with suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        remaining = asyncio.all_tasks(loop)
        for task in remaining:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*remaining, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve(app: web.Application, settings: Settings, *, listen: bool) -> None:
    runner = web.AppRunner(
        app, handle_signals=True, access_log=None, shutdown_timeout=settings.drain_timeout_s,
        keepalive_timeout=settings.keepalive_timeout_s, max_line_size=MAX_LINE_BYTES,
        max_field_size=MAX_FIELD_BYTES, max_headers=MAX_HEADERS)
    await runner.setup()
    try:
        if listen:
            site = CappedSite(runner, settings.host, settings.port, backlog=settings.listen_backlog,
                              max_connections=settings.max_connections)
            await site.start()
            print(f"======== Running on {site.name} ========", file=sys.stderr, flush=True)
        await asyncio.Event().wait()   # until a signal ends the loop
    finally:
        await runner.cleanup()


def _ignore_signals(loop: asyncio.AbstractEventLoop) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError, RuntimeError, ValueError):   # none here: Windows, or not the main thread
            loop.add_signal_handler(sig, _already_stopping, sig)


def _already_stopping(sig: signal.Signals) -> None:
    log.info("signal ignored: already stopping", extra={"signal": sig.name})


class CappedSite(web.BaseSite):
    """A TCP listener that keeps at most ``max_connections`` connections open."""

    __slots__ = ("_host", "_max_connections", "_port", "_refusals_logged_at", "_refused", "open")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, backlog: int, max_connections: int) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._max_connections = host, port, max_connections
        self.open = 0                 # connections open now
        self._refused = 0             # refused since the last log line
        self._refusals_logged_at = 0.0

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host, port=self._port))

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self._host, self._port, backlog=self._backlog)
        if self._port == 0 and self._server.sockets:
            self._port = self._server.sockets[0].getsockname()[1]

    def _protocol(self) -> asyncio.Protocol:
        """The protocol for a connection just accepted: aiohttp's, counted, or a refusal when the site is full."""
        if self.open >= self._max_connections:
            self._note_refusal()
            return _Refused()
        server = self._runner.server
        assert server is not None   # set by runner.setup(), before any site starts
        self.open += 1
        return _Counted(server(), self._closed)

    def _closed(self) -> None:
        self.open -= 1

    def _note_refusal(self) -> None:
        """One log line per ``REFUSALS_LOGGED_EVERY_S`` at most, however many connections are refused."""
        self._refused += 1
        now = time.monotonic()
        if now - self._refusals_logged_at >= REFUSALS_LOGGED_EVERY_S:
            log.warning("connections refused: PARLEY_MAX_CONNECTIONS are open",
                        extra={"refused": self._refused, "max_connections": self._max_connections})
            self._refused, self._refusals_logged_at = 0, now


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, which calls ``closed`` once when the connection is gone."""

    def __init__(self, inner: asyncio.Protocol, closed: Callable[[], None]) -> None:
        self._inner, self._closed = inner, closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed()
        self._inner.connection_lost(exc)


class _Refused(asyncio.Protocol):
    """A connection over the cap: a 503 and the connection closed at once. (A client whose request was already
    on its way may see the connection reset instead: it was refused either way.)"""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(BUSY)
        transport.close()
