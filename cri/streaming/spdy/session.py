"""A SPDY/3.1 server session on an upgraded asyncio connection, as the kubelet's and crictl's clients use it.

The client opens every stream (odd ids, SYN_STREAM with headers); the session answers each with SYN_REPLY (or
refuses it with RST_STREAM) and hands it to the protocol layer through `accept()`. Both sides end their direction
with FIN; RST_STREAM aborts a stream; PING from the client is echoed; GOAWAY ends the session.

Flow control: Go's spdystream, which every Kubernetes client uses, neither sends nor honours WINDOW_UPDATE, so
SETTINGS and WINDOW_UPDATE are accepted and ignored, and flow control is TCP's: a writer waits until the socket
drains, and a stream whose reader falls behind by `STREAM_BUFFER_LIMIT` bytes stops the session's reading (as
spdystream's own frame queues do) instead of growing without bound.

Idle timeout: a session with no stream opened, reset or carrying data for `idle_timeout` seconds is closed. PINGs
do not count (kubectl pings every few seconds; counting them would keep an abandoned session alive forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping

from cri.streaming.channels import ChannelClosed
from cri.streaming.spdy import frames
from cri.streaming.spdy.frames import Headers, SpdyProtocolError

log = logging.getLogger(__name__)

STREAM_BUFFER_LIMIT = 256 * 1024     # unread input per stream before the session stops reading the socket
MAX_STREAMS = 1024                   # open streams per session (port-forward opens two per connection)
DATA_CHUNK = 256 * 1024              # larger writes are cut into data frames of this size
READ_SIZE = 256 * 1024
WRITE_HIGH_WATER = 256 * 1024        # the socket's write buffer before writers wait
LINGER_SECONDS = 5.0                 # after GOAWAY, how long the client gets to read everything and hang up

# a hook that refuses a new stream by its headers: returns why, or None to accept it
StreamFilter = Callable[[Headers], str | None]


class SpdyStream:
    """One client-initiated stream; implements cri.streaming.channels.Channel."""

    def __init__(self, session: SpdySession, stream_id: int, headers: Headers) -> None:
        self._session = session
        self.id = stream_id
        self._headers = headers
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._readable = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._remote_done = False     # the client sent FIN or RST, or the connection ended
        self._local_done = False      # we sent FIN or RST
        self._reset = False
        self._discard = False

    def __repr__(self) -> str:
        return f"<spdy stream {self.id} {self.header('streamtype') or ''}>"

    @property
    def headers(self) -> Mapping[str, list[str]]:
        return self._headers

    def header(self, name: str) -> str:
        values = self._headers.get(name.lower())
        return values[0] if values else ""

    # --- input ----------------------------------------------------------------------------------------------

    async def read(self) -> bytes | None:
        if self._chunks:
            await asyncio.sleep(0)  # a reader with data always at hand still lets the loop run
        while not self._chunks:
            if self._remote_done:
                return None
            self._readable.clear()
            await self._readable.wait()
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._buffered <= STREAM_BUFFER_LIMIT:
            self._space.set()
        return data

    def discard_input(self) -> None:
        self._discard = True
        self._chunks.clear()
        self._buffered = 0
        self._space.set()

    def _feed(self, data: bytes) -> None:
        if self._discard or self._remote_done or not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self._readable.set()
        if self._buffered > STREAM_BUFFER_LIMIT:
            self._space.clear()

    def _remote_fin(self) -> None:
        self._remote_done = True
        self._readable.set()
        self._space.set()
        self._maybe_forget()

    def _connection_lost(self) -> None:
        self._local_done = True
        self._remote_fin()

    # --- output ---------------------------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        if self._local_done:
            raise ChannelClosed(f"stream {self.id} is closed")
        view = memoryview(data)
        for start in range(0, len(view), DATA_CHUNK):
            self._session._send(frames.encode_data(self.id, bytes(view[start:start + DATA_CHUNK])), data=True)
            await self._session._drain()
            # drain() does not yield while the socket takes everything: a fast producer would hold the loop
            await asyncio.sleep(0)
            if self._local_done:
                raise ChannelClosed(f"stream {self.id} is closed")

    async def close(self) -> None:
        if self._local_done:
            return
        self._local_done = True
        with contextlib.suppress(ChannelClosed):
            self._session._send(frames.encode_data(self.id, b"", fin=True), data=True)
        self._maybe_forget()

    def reset(self, status: int = frames.CANCEL) -> None:
        if not self._local_done:
            with contextlib.suppress(ChannelClosed):
                self._session._send(frames.encode_rst_stream(self.id, status), data=True)
        self._reset = True
        self._local_done = True
        self.discard_input()
        self._remote_fin()

    def _maybe_forget(self) -> None:
        if self._local_done and self._remote_done:
            self._session._forget(self)


class SpdySession:
    """The server side of one SPDY/3.1 connection; implements cri.streaming.channels.StreamConnection.

    `run()` reads frames until the client hangs up (the caller runs it as a task); `close()` says GOAWAY and
    lingers until the client has hung up."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, initial: bytes = b"", *,
                 idle_timeout: float, stream_filter: StreamFilter | None = None, name: str = "") -> None:
        self._reader = reader
        self._writer = writer
        self._initial = initial
        self._idle_timeout = idle_timeout
        self._filter = stream_filter
        self.name = name
        self._parser = frames.FrameParser()
        self._encoder = frames.HeaderEncoder()
        self._streams: dict[int, SpdyStream] = {}
        self._accepted: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self._last_stream_id = 0
        self._ended = asyncio.Event()
        self._closing = False
        self._closed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self.idle_expired = False
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    # --- the StreamConnection interface ----------------------------------------------------------------------

    async def accept(self) -> SpdyStream | None:
        stream = await self._accepted.get()
        if stream is None:
            self._accepted.put_nowait(None)  # every later accept() also learns that the session ended
        return stream

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    async def wait_ended(self) -> None:
        await self._ended.wait()

    async def close(self) -> None:
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            for stream in list(self._streams.values()):
                stream.discard_input()
            # a client that already hung up: the goodbye meets a reset socket (shutdown then says ENOTCONN)
            with contextlib.suppress(ChannelClosed, OSError):
                self._send(frames.encode_goaway(self._last_stream_id))
                await self._drain()
                if self._writer.can_write_eof():
                    self._writer.write_eof()
            # the client reads what is in flight, then hangs up; one that does not is cut off
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), LINGER_SECONDS)
        finally:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
            self._closed.set()

    def abort(self) -> None:
        """Cut the connection now (crispd is stopping)."""
        self._writer.transport.abort()

    # --- reading -----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        idle = asyncio.create_task(self._watch_idle())
        try:
            if self._initial:
                for frame in self._parser.feed(self._initial):
                    await self._handle(frame)
            while True:
                data = await self._reader.read(READ_SIZE)
                if not data:
                    return
                for frame in self._parser.feed(data):
                    await self._handle(frame)
                await asyncio.sleep(0)  # read() does not yield while the socket has data
        except SpdyProtocolError as exc:
            log.warning("streaming %s: SPDY protocol error from the client: %s", self.name, exc)
            with contextlib.suppress(ChannelClosed):
                self._send(frames.encode_goaway(self._last_stream_id, frames.GOAWAY_PROTOCOL_ERROR))
        except (ConnectionError, OSError, ChannelClosed) as exc:
            log.debug("streaming %s: connection lost: %s", self.name, exc)
        finally:
            idle.cancel()
            self._end()

    def _end(self) -> None:
        if self._ended.is_set():
            return
        self._ended.set()
        for stream in list(self._streams.values()):
            stream._connection_lost()
        self._streams.clear()
        self._accepted.put_nowait(None)

    async def _handle(self, frame: frames.Frame) -> None:
        if isinstance(frame, frames.DataFrame):
            await self._on_data(frame)
        elif isinstance(frame, frames.SynStream):
            self._on_syn_stream(frame)
        elif isinstance(frame, frames.RstStream):
            self._touch()
            stream = self._streams.get(frame.stream_id)
            if stream is not None:
                stream._reset = True
                stream._local_done = True
                stream.discard_input()
                stream._remote_fin()
        elif isinstance(frame, frames.HeadersFrame):
            stream = self._streams.get(frame.stream_id)
            if stream is not None and frame.fin:
                stream._remote_fin()
        elif isinstance(frame, frames.Ping):
            if frame.ping_id % 2 == 1:  # the client's ping (ours would be even): echo it
                with contextlib.suppress(ChannelClosed):
                    self._send(frames.encode_ping(frame.ping_id))
        elif isinstance(frame, frames.GoAway):
            log.debug("streaming %s: the client said GOAWAY (status %d)", self.name, frame.status)
        # SETTINGS, WINDOW_UPDATE, SYN_REPLY (we open no streams) and unknown control frames: nothing to do

    async def _on_data(self, frame: frames.DataFrame) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            return  # a stream we reset or forgot: what was in flight is dropped, as spdystream does
        self._touch()
        if stream._remote_done:
            with contextlib.suppress(ChannelClosed):
                self._send(frames.encode_rst_stream(frame.stream_id, frames.STREAM_ALREADY_CLOSED))
            return
        stream._feed(frame.data)
        if frame.fin:
            stream._remote_fin()
        elif not stream._space.is_set():
            # backpressure: stop reading the socket until this stream's reader catches up
            await stream._space.wait()

    def _on_syn_stream(self, frame: frames.SynStream) -> None:
        self._touch()
        stream_id = frame.stream_id
        if stream_id % 2 == 0 or stream_id <= self._last_stream_id:
            raise SpdyProtocolError(f"stream id {stream_id} after {self._last_stream_id} is not a new client stream")
        self._last_stream_id = stream_id
        refusal = None
        if self._closing:
            refusal = "the session is closing"
        elif len(self._streams) >= MAX_STREAMS:
            refusal = f"more than {MAX_STREAMS} open streams"
        elif self._filter is not None:
            refusal = self._filter(frame.headers)
        if refusal is not None:
            log.info("streaming %s: refusing stream %d: %s", self.name, stream_id, refusal)
            with contextlib.suppress(ChannelClosed):
                self._send(frames.encode_rst_stream(stream_id, frames.REFUSED_STREAM))
            return
        stream = SpdyStream(self, stream_id, frame.headers)
        self._streams[stream_id] = stream
        self._send(frames.encode_syn_reply(self._encoder, stream_id, {}))
        if frame.fin or frame.unidirectional:
            stream._remote_fin()
        self._accepted.put_nowait(stream)

    def _forget(self, stream: SpdyStream) -> None:
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]

    # --- writing -----------------------------------------------------------------------------------------------

    def _send(self, frame: bytes, data: bool = False) -> None:
        if self._writer.transport.is_closing():
            raise ChannelClosed("the connection is closed")
        if data:
            self._touch()
        self._writer.write(frame)

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ChannelClosed(f"the connection failed: {exc}") from None

    # --- idle timeout ------------------------------------------------------------------------------------------

    def _touch(self) -> None:
        self._last_activity = self._loop.time()

    async def _watch_idle(self) -> None:
        if self._idle_timeout <= 0:
            return
        while True:
            remaining = self._last_activity + self._idle_timeout - self._loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(remaining)
        self.idle_expired = True
        log.info("streaming %s: idle for %ss: closing", self.name, self._idle_timeout)
        with contextlib.suppress(ChannelClosed):
            self._send(frames.encode_goaway(self._last_stream_id))
        self._writer.transport.abort()
