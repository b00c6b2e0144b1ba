"""The byte streams ttrpc runs over: an asyncio stream pair, or one logical connection of a multiplexer."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol


class ByteStream(Protocol):
    async def readexactly(self, n: int) -> bytes:
        """`n` bytes; asyncio.IncompleteReadError at end-of-stream."""

    async def write(self, data: bytes) -> None:
        """Send all of `data` (a frame is written in one call, never interleaved with another)."""

    def close(self) -> None: ...


class SocketStream:
    """A ByteStream on an asyncio (reader, writer) pair, e.g. of a unix socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def readexactly(self, n: int) -> bytes:
        return await self.reader.readexactly(n)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self.writer.close()
