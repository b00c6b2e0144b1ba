"""gRPC's wire protocol (gRPC over HTTP/2), served on crispd's own asyncio loop.

What crispd needs of a gRPC server, and nothing more: unary and server-streaming methods (CRI has no client
streaming), deadlines (`grpc-timeout`), cancellation (the client resets the stream or goes away: the handler's task
is cancelled, as grpc.aio does), flow control both ways, gzip/deflate-compressed requests, and a graceful stop
(GOAWAY, then a grace period for the RPCs in flight). HTTP/2 framing, HPACK and the flow-control windows are the
`h2` library's; the gRPC layer (paths, the length-prefixed messages, status trailers) is here.

Why not grpcio's server: its C core runs RPCs on threads of its own and hands each one to the loop, a hop that was
most of every small RPC's time (0.45 ms a call back to back, 1 ms after a pause, against ~0.25 and ~0.7 here), and
importing it costs crispd ~25 MB of resident memory. Clients (the kubelet, crictl, the tests) are unchanged: it
is the same protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

log = logging.getLogger(__name__)


class StatusCode(enum.Enum):
    """gRPC's status codes (the numbers are the protocol's)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class AbortError(Exception):
    """Raised by `Context.abort`: the RPC ends with the status set on its context."""


@dataclass(frozen=True)
class Method:
    """One RPC as the server routes it: `behaviour(request, context)` is a coroutine function (unary) or returns an
    async iterator or an awaitable (server streaming)."""

    service: str  # the service's full name, runtime.v1.RuntimeService
    name: str
    behaviour: Callable[[Any, Context], Any]
    request_deserializer: Callable[[bytes], Any]
    response_serializer: Callable[[Any], bytes]
    streaming: bool = False

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    def with_behaviour(self, behaviour: Callable[[Any, Context], Any]) -> Method:
        return replace(self, behaviour=behaviour)


# the request's message: a compressed flag and a 4-byte big-endian length
_PREFIX = struct.Struct(">BI")
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
# the response's headers: nothing in them varies
_RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc"),
                     (b"grpc-accept-encoding", b"identity,deflate,gzip")]
# no client needs to queue its calls behind others on a local socket (grpc's own server sets no limit either)
_MAX_CONCURRENT_STREAMS = 1 << 16
# a request is taken whole before it is handled: a window that large spares a big one round trips
_WINDOW = 1 << 24
# the headers crispd sends are the constants above and the status: h2 need not check them on every answer
_H2_CONFIG = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_outbound_headers=False,
                                       normalize_outbound_headers=False)


def _grpc_message(details: str) -> bytes:
    """`details` percent-encoded as the grpc-message trailer wants it (UTF-8; printable ASCII but % as is)."""
    out = bytearray()
    for byte in details.encode("utf-8", "replace"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def _trailers(code: StatusCode, details: str | None) -> list[tuple[bytes, bytes]]:
    trailers = [(b"grpc-status", b"%d" % code.value)]
    if details:
        trailers.append((b"grpc-message", _grpc_message(details)))
    return trailers


def _timeout(value: bytes) -> float | None:
    """grpc-timeout's seconds (1 to 8 digits and a unit); None if malformed."""
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


class Context:
    """What a handler may ask of its RPC, as grpc.aio's ServicerContext spells it."""

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream
        self._code: StatusCode | None = None
        self._details: str | None = None

    def time_remaining(self) -> float | None:
        """Seconds until the caller's deadline; None if it gave none."""
        deadline = self._stream.deadline
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def cancelled(self) -> bool:
        """The caller is gone: it reset the stream or closed the connection, or its deadline passed."""
        return self._stream.gone or self._stream.expired

    def code(self) -> StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details

    def set_code(self, code: StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    async def abort(self, code: StatusCode, details: str = "") -> NoReturn:
        """End the RPC with `code` and `details`."""
        self._code, self._details = code, details
        raise AbortError(details)

    async def write(self, message: Any) -> None:
        """Send one message of a server-streaming RPC; waits while the client reads nothing."""
        await self._stream.send_message(message)


class _Stream:
    """One RPC on a connection: its request as it arrives, then its handling, then what is still to be sent.

    What the handler sends is queued whole in the stream's outbox and leaves as the client's flow-control windows
    allow, its status after it: a message is never cut short by a write given up on (a slow event subscriber), and
    a unary handler never waits for its answer to leave."""

    def __init__(self, connection: _Connection, stream_id: int, path: str, deadline: float | None,
                 encoding: bytes | None) -> None:
        self.connection = connection
        self.id = stream_id
        self.path = path
        self.deadline = deadline
        self.encoding = encoding
        self.body = bytearray()
        self.method: Method | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.headers_sent = False
        self.outbox = bytearray()
        self.trailers: list[tuple[bytes, bytes]] | None = None  # the status, once the outbox is empty
        self.ended = False  # the status has been sent
        self.handled = False  # the handler is done
        self.drained: asyncio.Event | None = None  # a streaming handler waiting for the outbox to empty
        self.gone = False  # reset by the client, or its connection lost
        self.expired = False  # its deadline passed

    def request(self) -> bytes:
        """The request's one message, decompressed; ValueError if it is not one."""
        body = bytes(self.body)
        if len(body) < _PREFIX.size:
            raise ValueError("the request has no message")
        compressed, length = _PREFIX.unpack_from(body)
        message = body[_PREFIX.size:]
        if length != len(message):
            raise ValueError("the request is not one message")
        if compressed:
            if self.encoding in (b"gzip", b"deflate"):
                return zlib.decompress(message, 31 if self.encoding == b"gzip" else 15)
            raise ValueError(f"the request is compressed with {self.encoding!r}, which crispd does not take")
        return message

    def _queue(self, message: Any) -> None:
        assert self.method is not None
        data = self.method.response_serializer(message)
        if len(data) > self.connection.server.max_message_bytes:
            raise _TooBig(f"the answer is larger than {self.connection.server.max_message_bytes} bytes")
        if not self.headers_sent:
            self.headers_sent = True
            self.connection.h2.send_headers(self.id, _RESPONSE_HEADERS)
        self.outbox += _PREFIX.pack(0, len(data))
        self.outbox += data

    async def send_message(self, message: Any) -> None:
        """One message of a server-streaming RPC, waiting until it has left (or the client has gone)."""
        if self.gone:
            raise asyncio.CancelledError()
        self._queue(message)
        self.connection.pump(self)
        while self.outbox and not self.gone:
            if self.drained is None:
                self.drained = asyncio.Event()
            self.drained.clear()
            await self.drained.wait()
        if self.gone:
            raise asyncio.CancelledError()

    def answer(self, message: Any) -> None:
        """A unary RPC's answer and its status: at once when the windows allow (one write), else as they open."""
        if self.gone:
            return
        self._queue(message)
        self.trailers = _trailers(StatusCode.OK, None)
        self.connection.pump(self)

    def finish(self, code: StatusCode, details: str | None) -> None:
        """End the RPC with a status: after what is queued, or as a trailers-only answer when nothing was sent."""
        if self.gone or self.ended or self.trailers is not None:
            return
        if self.headers_sent:
            self.trailers = _trailers(code, details)
        else:
            self.headers_sent = True
            self.trailers = _RESPONSE_HEADERS + _trailers(code, details)
        self.connection.pump(self)


class _TooBig(Exception):
    """An answer over the server's message size limit."""


class _Connection(asyncio.Protocol):
    """One client connection: HTTP/2 in, RPC tasks out. The transport's buffer needs no limit of its own: what is
    written to it is bounded by the client's flow-control windows."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.h2 = h2.connection.H2Connection(_H2_CONFIG)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.highest = 0  # the last stream id taken, for GOAWAY
        self._flush_pending = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(self)
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: _MAX_CONCURRENT_STREAMS,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
        })
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_WINDOW - self.h2.inbound_flow_control_window)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.debug("gRPC connection closed: %s", exc)
            self.flush()
            self.close()
            return
        for event in events:
            handle = self._HANDLERS.get(type(event))
            if handle is not None:
                handle(self, event)
        self.flush_soon()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for stream in list(self.streams.values()):
            self._gone(stream)

    # HTTP/2 events

    def _request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        self.highest = max(self.highest, sid)
        headers = dict(event.headers or ())
        if self.server.draining:
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        content_type = headers.get(b"content-type", b"")
        if headers.get(b":method") != b"POST" or not content_type.startswith(b"application/grpc"):
            self.h2.send_headers(sid, [(b":status", b"415")], end_stream=True)
            return
        deadline = None
        if (timeout := headers.get(b"grpc-timeout")) is not None:
            seconds = _timeout(timeout)
            if seconds is not None:
                deadline = time.monotonic() + seconds
        path = headers.get(b":path", b"").decode("utf-8", "replace")
        stream = _Stream(self, sid, path, deadline, headers.get(b"grpc-encoding"))
        self.streams[sid] = stream
        if deadline is not None:
            stream.timer = self.loop.call_at(deadline, self._expire, stream)
        if event.stream_ended is not None:
            self._start(stream)

    def _data(self, event: h2.events.DataReceived) -> None:
        self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.task is not None or stream.trailers is not None:
            return
        stream.body += event.data
        if len(stream.body) > self.server.max_message_bytes + _PREFIX.size:
            stream.handled = True  # never will be: refused here
            stream.finish(StatusCode.RESOURCE_EXHAUSTED,
                          f"the request is larger than {self.server.max_message_bytes} bytes")
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.reset_stream(stream.id, h2.errors.ErrorCodes.NO_ERROR)
            self._forget(stream)
            return
        if event.stream_ended is not None:
            self._start(stream)

    def _ended(self, event: h2.events.StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None and stream.task is None and stream.trailers is None:
            self._start(stream)

    def _reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            self._gone(stream)

    def _window(self, event: h2.events.WindowUpdated) -> None:
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self.pump(stream)
        else:
            self._pump_all()

    def _settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        self._pump_all()

    _HANDLERS: dict[type, Callable[[_Connection, Any], None]] = {
        h2.events.RequestReceived: _request,
        h2.events.DataReceived: _data,
        h2.events.StreamEnded: _ended,
        h2.events.StreamReset: _reset,
        h2.events.WindowUpdated: _window,
        h2.events.RemoteSettingsChanged: _settings,
    }

    # the RPCs

    def _start(self, stream: _Stream) -> None:
        stream.method = self.server.methods.get(stream.path)
        stream.task = self.loop.create_task(self._serve(stream))
        self.server.tasks.add(stream.task)
        stream.task.add_done_callback(self.server.tasks.discard)

    async def _serve(self, stream: _Stream) -> None:
        method = stream.method
        try:
            if method is None:
                stream.finish(StatusCode.UNIMPLEMENTED, f"Method not found: {stream.path}")
                return
            try:
                request = method.request_deserializer(stream.request())
            except Exception as exc:  # any undecodable request is the client's
                stream.finish(StatusCode.INTERNAL, f"cannot parse the request: {exc}")
                return
            context = Context(stream)
            try:
                if method.streaming:
                    await self._stream_answer(method, request, context, stream)
                else:
                    stream.answer(await method.behaviour(request, context))
            except AbortError:
                stream.finish(context.code() or StatusCode.UNKNOWN, context.details())
            except _TooBig as exc:
                stream.finish(StatusCode.RESOURCE_EXHAUSTED, str(exc))
            except asyncio.CancelledError:
                # cancelled here: the caller went (nothing to answer), its deadline passed, or the server stops
                if stream.expired:
                    stream.finish(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
                else:
                    stream.finish(StatusCode.UNAVAILABLE, "the server is stopping")
            except Exception as exc:  # a handler the guard does not wrap
                log.exception("%s failed", stream.path)
                stream.finish(StatusCode.UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}")
        finally:
            stream.handled = True
            if stream.ended or stream.gone:
                self._forget(stream)

    async def _stream_answer(self, method: Method, request: Any, context: Context, stream: _Stream) -> None:
        result = method.behaviour(request, context)
        if isinstance(result, AsyncIterator):
            async for message in result:
                await stream.send_message(message)
        elif result is not None:
            await result
        stream.finish(StatusCode.OK, None)

    def _expire(self, stream: _Stream) -> None:
        stream.expired = True
        if stream.task is None:  # the request never ended: no handler to stop
            stream.handled = True
            stream.finish(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            if stream.ended:
                self._forget(stream)
        elif not stream.handled:
            stream.task.cancel()

    def _gone(self, stream: _Stream) -> None:
        stream.gone = True
        stream.outbox.clear()
        stream.trailers = None
        if stream.drained is not None:
            stream.drained.set()
        if stream.task is not None and not stream.handled:
            stream.task.cancel()
        else:
            self._forget(stream)

    def _forget(self, stream: _Stream) -> None:
        if self.streams.pop(stream.id, None) is not None and stream.timer is not None:
            stream.timer.cancel()
        self.server.idle_check()

    # writing

    def pump(self, stream: _Stream) -> None:
        """Send what `stream` has queued as far as the windows allow, then its status once all has left."""
        if stream.gone or stream.ended:
            return
        h2conn = self.h2
        try:
            if stream.outbox:
                window = h2conn.local_flow_control_window(stream.id)
                frame = h2conn.max_outbound_frame_size
                sent = 0
                view = memoryview(stream.outbox)
                while sent < len(view) and window > 0:
                    size = min(window, frame, len(view) - sent)
                    h2conn.send_data(stream.id, view[sent:sent + size].tobytes())
                    sent += size
                    window -= size
                view.release()
                del stream.outbox[:sent]
            if not stream.outbox:
                if stream.drained is not None:
                    stream.drained.set()
                if stream.trailers is not None:
                    h2conn.send_headers(stream.id, stream.trailers, end_stream=True)
                    stream.trailers = None
                    stream.ended = True
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
            log.debug("stream %d of a gRPC connection: %s", stream.id, exc)
            stream.outbox.clear()
            stream.trailers = None
            stream.ended = True
            if stream.drained is not None:
                stream.drained.set()
        self.flush()
        if stream.ended and stream.handled:
            self._forget(stream)

    def _pump_all(self) -> None:
        for stream in list(self.streams.values()):
            if stream.outbox or stream.trailers is not None:
                self.pump(stream)

    def flush_soon(self) -> None:
        """Flush after what the loop runs next: an RPC that answers at once (most do) then sends its answer with
        what h2 owes the client (PING and SETTINGS acks, window updates) in one write, not two."""
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_pending = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def goaway(self) -> None:
        """Tell the client that no stream after the last one taken will be served, and keep serving those: h2's own
        close_connection would end the connection's state, and with it the answers still to come."""
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(hyperframe.frame.GoAwayFrame(0, last_stream_id=self.highest, error_code=0).serialize())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Server:
    """The gRPC server on one unix socket: `add` the methods, `listen`, later `stop`."""

    def __init__(self, max_message_bytes: int = 4 << 20) -> None:
        self.max_message_bytes = max_message_bytes
        self.methods: dict[str, Method] = {}
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        self._server: asyncio.Server | None = None
        self._idle: asyncio.Event | None = None

    def add(self, methods: Iterable[Method]) -> None:
        for method in methods:
            self.methods[method.path] = method

    async def listen(self, path: Path | str) -> None:
        """Serve on the unix socket `path` (made by the caller's umask); OSError if it cannot."""
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: _Connection(self), os.fspath(path))

    def idle_check(self) -> None:
        if self._idle is not None and not any(c.streams for c in self.connections):
            self._idle.set()

    async def stop(self, grace: float | None) -> None:
        """Take no new connection or RPC; give the RPCs in flight `grace` seconds, then cancel them; close every
        connection."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.goaway()
        self._idle = asyncio.Event()
        self.idle_check()
        if grace:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks))
        for connection in list(self.connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()
