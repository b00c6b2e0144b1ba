"""NRI's connection multiplexer: several logical byte streams over one socket (the "trunk").

Each chunk on the trunk is `connection id (4) | length (4)`, big-endian, then `length` bytes of that connection's
stream. A chunk read may be as long as one ttrpc frame (10 + 4 MiB bytes); crisp writes chunks of at most 4 KiB:
NRI's Go reader hands each chunk whole to one Read of ttrpc's 4 KiB bufio buffer and fails (ENOMEM) on a longer
one unless that Read happens to be a large payload's (as its own writer arranges). Id 0 is reserved; chunks for a
connection nobody opened are dropped. Opening is local: nothing is sent, both ends simply use the same ids (NRI: 1
carries the plugin's service, 2 the runtime's). A connection whose reader falls more than `buffer_limit` bytes
behind breaks the whole trunk, as a full read queue does in NRI's Go implementation; crisp's readers consume every
byte as it comes, so only a peer that floods a connection nobody answers hits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable

from runtime.ttrpc import wire

log = logging.getLogger(__name__)

HEADER = struct.Struct(">II")
MAX_CHUNK = wire.HEADER_SIZE + wire.MAX_DATA  # the longest chunk accepted
WRITE_CHUNK = 4096  # the longest chunk written
BUFFER_LIMIT = 4 * MAX_CHUNK


class MuxConnection:
    """One logical connection: a ByteStream."""

    def __init__(self, mux: Mux, conn_id: int) -> None:
        self._mux = mux
        self.conn_id = conn_id
        self._buffer = bytearray()
        self._arrived = asyncio.Event()
        self._eof = False

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        self._arrived.set()

    def _end(self) -> None:
        self._eof = True
        self._arrived.set()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def readexactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if self._eof:
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(partial, n)
            self._arrived.clear()
            await self._arrived.wait()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def write(self, data: bytes) -> None:
        await self._mux.send(self.conn_id, data)

    def close(self) -> None:
        """Closing one connection closes the trunk (NRI's plugin connections live and die together)."""
        self._mux.close()


class Mux:
    """Multiplexes connections over an asyncio (reader, writer) pair; `start()` begins reading the trunk.
    `on_close` runs once when the trunk ends (peer gone, framing broken, or `close()`)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_close: Callable[[str], None] | None = None, buffer_limit: int = BUFFER_LIMIT) -> None:
        self._reader = reader
        self._writer = writer
        self._on_close = on_close
        self._buffer_limit = buffer_limit
        self._conns: dict[int, MuxConnection] = {}
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        self.reason = ""

    def open(self, conn_id: int) -> MuxConnection:
        if conn_id == 0:
            raise ValueError("connection id 0 is reserved")
        conn = self._conns.get(conn_id)
        if conn is None:
            conn = self._conns[conn_id] = MuxConnection(self, conn_id)
            if self.closed:
                conn._end()
        return conn

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    async def send(self, conn_id: int, data: bytes) -> None:
        if self.closed:
            raise wire.ConnectionClosed(f"mux: {self.reason or 'closed'}")
        view = memoryview(data)
        # all chunks are queued before the first await: writes of two tasks never interleave within a connection
        while True:
            chunk = view[:WRITE_CHUNK]
            self._writer.write(HEADER.pack(conn_id, len(chunk)) + bytes(chunk))
            view = view[len(chunk):]
            if not view:
                break
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self._shut(f"write failed: {exc}")
            raise wire.ConnectionClosed(f"mux: {exc}") from None

    async def _read_loop(self) -> None:
        reason = "peer closed the connection"
        try:
            while True:
                conn_id, length = HEADER.unpack(await self._reader.readexactly(HEADER.size))
                if length > MAX_CHUNK:
                    reason = f"chunk of {length} bytes for connection {conn_id} is over the limit of {MAX_CHUNK}"
                    break
                data = await self._reader.readexactly(length) if length else b""
                conn = self._conns.get(conn_id)
                if conn is None:
                    continue
                if conn.buffered + len(data) > self._buffer_limit:
                    reason = f"connection {conn_id} is more than {self._buffer_limit} bytes behind"
                    break
                conn._feed(data)
        except asyncio.IncompleteReadError:
            pass
        except (ConnectionError, OSError) as exc:
            reason = f"read failed: {exc}"
        self._shut(reason)

    def _shut(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        for conn in self._conns.values():
            conn._end()
        with contextlib.suppress(RuntimeError):
            self._writer.close()
        if self._on_close is not None:
            self._on_close(reason)

    def close(self) -> None:
        self._shut("closed")
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            await self._writer.wait_closed()
