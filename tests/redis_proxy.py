"""A TCP proxy in front of a real Redis that a test can cut, hold or restore: an outage without a fake Redis."""

from __future__ import annotations

import asyncio


class Proxy:
    """A TCP proxy in front of Redis that the test can cut (connections dropped, new ones closed at once)."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.down = False
        self.refused = 0
        self.port = 0
        self.flowing = asyncio.Event()   # clear: connections stay open but nothing goes through (a stuck Redis)
        self.flowing.set()

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            self.refused += 1
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        link = (writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._links.discard(link)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65_536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()

    def cut(self) -> None:
        self.flowing.set()
        self.down = True
        for client, server in self._links:
            client.transport.abort()
            server.transport.abort()

    def restore(self) -> None:
        self.down = False
