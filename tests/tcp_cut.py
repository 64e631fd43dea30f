"""A TCP relay a test can cut: a dependency (a database) going away and coming back
while the process under test keeps running and its pooled connections stay open."""

from __future__ import annotations

import asyncio
import contextlib

from devstack.processes import free_port


class CuttableRelay:
    """Listens on a free port and relays each connection to `target`; `cut()` closes every
    relayed connection and refuses new ones until `mend()`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.port = free_port()
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> CuttableRelay:
        await self.mend()
        return self

    async def mend(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _relay(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection(*self._target)
        except OSError:
            client.close()
            return
        self._writers.update((client, upstream))
        await asyncio.gather(
            _pipe(client_reader, upstream), _pipe(upstream_reader, client), return_exceptions=True
        )
        for writer in (client, upstream):
            self._writers.discard(writer)
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()
