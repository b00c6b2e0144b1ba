"""gRPC's wire protocol (gRPC over HTTP/2), served on crispd's own asyncio loop.

What crispd needs of a gRPC server, and nothing more: unary and server-streaming methods (CRI has no client
streaming), deadlines (`grpc-timeout`), cancellation (the client resets the stream or goes away: the handler's task
is cancelled, as grpc.aio does), flow control both ways, gzip/deflate-compressed requests, and a graceful stop
(GOAWAY, then a grace period for the RPCs in flight). HTTP/2's framing and flow control are here too, as a server
needs them and no more; HPACK decoding is the `hpack` library's.

Why not grpcio's server: its C core runs RPCs on threads of its own and hands each one to the loop, a hop that was
most of every small RPC's time, and importing it costs crispd ~12 MB of resident memory. Why not the `h2` library:
it turns every frame and header into objects and checks, about 300 us of CPU per small RPC against about 60 here.
A Go client's Version takes ~0.2 ms on a hot connection (grpcio's server: 0.45). Clients (the kubelet, crictl, the
tests) are unchanged: it is the same protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import hpack

from runtime.ttrpc.wire import Code as StatusCode  # gRPC's status codes, which ttrpc carries too

__all__ = ["AbortError", "Context", "Method", "Server", "StatusCode"]

log = logging.getLogger(__name__)


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

# HTTP/2 (RFC 9113): the client's preface, a frame's head (length: 24 bits), the frame types and flags used here
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEAD = struct.Struct(">HBBBI")
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, \
    _CONTINUATION = range(10)
_END_STREAM = _ACK = 0x1
_END_HEADERS = 0x4
_PADDED = 0x8
_PRIORITY_FLAG = 0x20
_NO_ERROR, _PROTOCOL_ERROR, _FLOW_CONTROL_ERROR, _STREAM_CLOSED, _FRAME_SIZE_ERROR, _REFUSED_STREAM, \
    _COMPRESSION_ERROR = 0, 1, 3, 5, 6, 7, 9
_SETTING_HEADER_TABLE_SIZE, _SETTING_MAX_CONCURRENT_STREAMS, _SETTING_INITIAL_WINDOW_SIZE, \
    _SETTING_MAX_FRAME_SIZE = 1, 3, 4, 5
_DEFAULT_WINDOW = 65535
_DEFAULT_FRAME = 16384  # the largest frame either side takes unless told more (crispd never tells more)
_MAX_WINDOW = 2**31 - 1
# no client needs to queue its calls behind others on a local socket (grpc's own server sets no limit either)
_MAX_CONCURRENT_STREAMS = 1 << 16
# a request is taken whole before it is handled: a window that large spares a big one round trips
_WINDOW = 1 << 24
# a request's headers, CONTINUATIONs included: far more than any gRPC client sends
_MAX_HEADER_BLOCK = 1 << 16


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return _HEAD.pack(size >> 8, size & 0xFF, kind, flags, stream_id) + payload


def _hpack_int(value: int, prefix_bits: int) -> bytes:
    """An HPACK integer with an N-bit prefix (RFC 7541, 5.1), the prefix's other bits zero."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out = bytearray((limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, its name new (RFC 7541, 6.2.2): it leaves the client's dynamic
    table alone, so crispd's answers need no HPACK encoder state, and their constant parts are encoded once."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


# :status 200 is entry 8 of HPACK's static table
_RESPONSE_HEADERS = b"\x88" + _literal(b"content-type", b"application/grpc") + _literal(
    b"grpc-accept-encoding", b"identity,deflate,gzip")
_NOT_GRPC = b"\x08" + _hpack_int(3, 7) + b"415"  # :status (static entry 8's name) 415
_OK_TRAILERS = _literal(b"grpc-status", b"0")


def _grpc_message(details: str) -> bytes:
    """`details` percent-encoded as the grpc-message trailer wants it (UTF-8; printable ASCII but % as is)."""
    out = bytearray()
    for byte in details.encode("utf-8", "replace"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def _trailers(code: StatusCode, details: str | None) -> bytes:
    if code is StatusCode.OK and not details:
        return _OK_TRAILERS
    block = _literal(b"grpc-status", b"%d" % code.value)
    if details:
        block += _literal(b"grpc-message", _grpc_message(details))
    return block


def _timeout(value: bytes) -> float | None:
    """grpc-timeout's seconds (1 to 8 digits and a unit); None if malformed."""
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


class _ConnectionError(Exception):
    """The client broke HTTP/2: the connection ends with GOAWAY and this code."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


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
                 encoding: bytes | None, send_window: int) -> None:
        self.connection = connection
        self.id = stream_id
        self.path = path
        self.deadline = deadline
        self.encoding = encoding
        self.send_window = send_window
        self.body = bytearray()
        self.unacknowledged = 0  # request bytes taken since the stream's window was last opened again
        self.method: Method | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.headers_sent = False
        self.outbox = bytearray()
        self.trailers: bytes | None = None  # the status's header block, sent once the outbox is empty
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
            if self.encoding not in (b"gzip", b"deflate"):
                raise ValueError(f"the request is compressed with {self.encoding!r}, which crispd does not take")
            # inflated no further than the limit: a few KB of gzip can hold gigabytes
            limit = self.connection.server.max_message_bytes
            inflater = zlib.decompressobj(31 if self.encoding == b"gzip" else 15)
            message = inflater.decompress(message, limit + 1)
            if len(message) > limit:
                raise _TooBig(f"the request is larger than {limit} bytes once inflated")
        return message

    def _queue(self, message: Any) -> None:
        assert self.method is not None
        data = self.method.response_serializer(message)
        if len(data) > self.connection.server.max_message_bytes:
            raise _TooBig(f"the answer is larger than {self.connection.server.max_message_bytes} bytes")
        if not self.headers_sent:
            self.headers_sent = True
            self.connection.send_headers(self.id, _RESPONSE_HEADERS, end_stream=False)
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
        self.trailers = _OK_TRAILERS
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
    """One client connection: HTTP/2 in, RPC tasks out, as RFC 9113 has a server do it, with what crispd's gRPC
    needs and no more (no server push, no priorities: both are optional). HPACK decoding is the `hpack` library's;
    the answers' header blocks need no encoder (`_literal`). The transport's buffer needs no limit of its own: what
    is written to it is bounded by the client's flow-control windows."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.highest = 0  # the last stream id the client opened, for GOAWAY
        self._in = bytearray()
        self._preface = False
        self._out: list[bytes] = []
        self._flush_pending = False
        self._decoder = hpack.Decoder()
        self._continuing: tuple[int, bytearray, bool] | None = None  # a header block in CONTINUATION frames
        self._send_window = _DEFAULT_WINDOW  # the connection's, for what crispd sends
        self._peer_window = _DEFAULT_WINDOW  # SETTINGS_INITIAL_WINDOW_SIZE: each new stream's send window
        self._max_frame = _DEFAULT_FRAME
        self._unacknowledged = 0  # request bytes taken since the connection's window was last opened again

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(self)
        settings = struct.pack(">HIHI", _SETTING_MAX_CONCURRENT_STREAMS, _MAX_CONCURRENT_STREAMS,
                               _SETTING_INITIAL_WINDOW_SIZE, _WINDOW)
        self._out.append(_frame(_SETTINGS, 0, 0, settings))
        self._out.append(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", _WINDOW - _DEFAULT_WINDOW)))
        self.flush()

    def data_received(self, data: bytes) -> None:
        self._in += data
        try:
            self._frames()
        except _ConnectionError as exc:
            log.debug("gRPC connection closed: %s", exc)
            self._out.append(_frame(_GOAWAY, 0, 0, struct.pack(">II", self.highest, exc.code) + str(exc).encode()))
            self.flush()
            self.close()
            return
        self.flush_soon()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for stream in list(self.streams.values()):
            self._gone(stream)

    # HTTP/2 frames

    def _frames(self) -> None:
        buffer = self._in
        if not self._preface:
            if len(buffer) < len(_PREFACE):
                if not _PREFACE.startswith(bytes(buffer)):
                    raise _ConnectionError(_PROTOCOL_ERROR, "not an HTTP/2 client")
                return
            if buffer[:len(_PREFACE)] != _PREFACE:
                raise _ConnectionError(_PROTOCOL_ERROR, "not an HTTP/2 client")
            del buffer[:len(_PREFACE)]
            self._preface = True
        at = 0
        while len(buffer) - at >= _HEAD.size:
            high, low, kind, flags, stream_id = _HEAD.unpack_from(buffer, at)
            size = (high << 8) | low
            if size > _DEFAULT_FRAME:
                raise _ConnectionError(_FRAME_SIZE_ERROR, f"a frame of {size} bytes")
            end = at + _HEAD.size + size
            if end > len(buffer):
                break
            payload = bytes(buffer[at + _HEAD.size:end])
            at = end
            stream_id &= _MAX_WINDOW
            if self._continuing is not None and kind != _CONTINUATION:
                raise _ConnectionError(_PROTOCOL_ERROR, "a header block broken off")
            handle = self._FRAMES.get(kind)
            if handle is not None:  # unknown types are ignored, as the protocol says
                handle(self, flags, stream_id, payload)
        del buffer[:at]

    @staticmethod
    def _unpadded(flags: int, payload: bytes) -> bytes:
        if flags & _PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ConnectionError(_PROTOCOL_ERROR, "padding longer than its frame")
            return payload[1:len(payload) - payload[0]]
        return payload

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            raise _ConnectionError(_PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        block = self._unpadded(flags, payload)
        if flags & _PRIORITY_FLAG:
            block = block[5:]
        if flags & _END_HEADERS:
            self._header_block(stream_id, block, bool(flags & _END_STREAM))
        else:
            self._continuing = (stream_id, bytearray(block), bool(flags & _END_STREAM))

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuing is None or self._continuing[0] != stream_id:
            raise _ConnectionError(_PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        block = self._continuing[1]
        block += payload
        if len(block) > _MAX_HEADER_BLOCK:
            raise _ConnectionError(_PROTOCOL_ERROR, f"a header block over {_MAX_HEADER_BLOCK} bytes")
        if flags & _END_HEADERS:
            end_stream = self._continuing[2]
            self._continuing = None
            self._header_block(stream_id, bytes(block), end_stream)

    def _header_block(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        try:  # every block is decoded, whatever becomes of its stream: the decoder's table follows the client's
            headers = dict(self._decoder.decode(block, raw=True))
        except hpack.HPACKError as exc:
            raise _ConnectionError(_COMPRESSION_ERROR, f"a header block HPACK cannot decode: {exc}") from None
        stream = self.streams.get(stream_id)
        if stream is not None:  # the request's trailers: the end of it
            if end_stream and stream.task is None and stream.trailers is None:
                self._start(stream)
            return
        if stream_id <= self.highest:
            self._out.append(_frame(_RST_STREAM, 0, stream_id, struct.pack(">I", _STREAM_CLOSED)))
            return
        self.highest = stream_id
        if self.server.draining:
            self._out.append(_frame(_RST_STREAM, 0, stream_id, struct.pack(">I", _REFUSED_STREAM)))
            return
        content_type = headers.get(b"content-type", b"")
        if headers.get(b":method") != b"POST" or not content_type.startswith(b"application/grpc"):
            self.send_headers(stream_id, _NOT_GRPC, end_stream=True)
            if not end_stream:
                self._out.append(_frame(_RST_STREAM, 0, stream_id, struct.pack(">I", _NO_ERROR)))
            return
        deadline = None
        if (timeout := headers.get(b"grpc-timeout")) is not None:
            seconds = _timeout(timeout)
            if seconds is not None:
                deadline = time.monotonic() + seconds
        path = headers.get(b":path", b"").decode("utf-8", "replace")
        stream = _Stream(self, stream_id, path, deadline, headers.get(b"grpc-encoding"), self._peer_window)
        self.streams[stream_id] = stream
        if deadline is not None:
            stream.timer = self.loop.call_at(deadline, self._expire, stream)
        if end_stream:
            self._start(stream)

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(_PROTOCOL_ERROR, "DATA on stream 0")
        # what the client sent counts against both windows, padding and all, whatever becomes of it
        self._unacknowledged += len(payload)
        if self._unacknowledged >= _WINDOW // 2:
            self._out.append(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", self._unacknowledged)))
            self._unacknowledged = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.task is not None or stream.trailers is not None:
            return
        stream.body += self._unpadded(flags, payload)
        stream.unacknowledged += len(payload)
        if stream.unacknowledged >= _WINDOW // 2 and not flags & _END_STREAM:
            self._out.append(_frame(_WINDOW_UPDATE, 0, stream_id, struct.pack(">I", stream.unacknowledged)))
            stream.unacknowledged = 0
        if len(stream.body) > self.server.max_message_bytes + _PREFIX.size:
            stream.handled = True  # never will be: refused here
            stream.finish(StatusCode.RESOURCE_EXHAUSTED,
                          f"the request is larger than {self.server.max_message_bytes} bytes")
            self._out.append(_frame(_RST_STREAM, 0, stream_id, struct.pack(">I", _NO_ERROR)))
            self._forget(stream)
            return
        if flags & _END_STREAM:
            self._start(stream)

    def _on_rst_stream(self, flags: int, stream_id: int, payload: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._gone(stream)

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise _ConnectionError(_PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & _ACK:
            return
        if len(payload) % 6:
            raise _ConnectionError(_FRAME_SIZE_ERROR, "SETTINGS of a bad size")
        for at in range(0, len(payload), 6):
            setting, value = struct.unpack_from(">HI", payload, at)
            if setting == _SETTING_INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise _ConnectionError(_FLOW_CONTROL_ERROR, f"an initial window of {value}")
                for stream in self.streams.values():
                    stream.send_window += value - self._peer_window
                self._peer_window = value
            elif setting == _SETTING_MAX_FRAME_SIZE:
                if not _DEFAULT_FRAME <= value < 1 << 24:
                    raise _ConnectionError(_PROTOCOL_ERROR, f"a largest frame of {value}")
                self._max_frame = value
            # the client's HPACK table size only bounds an encoder's table, and crispd's answers use none
        self._out.append(_frame(_SETTINGS, _ACK, 0))
        self._pump_all()

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0 or len(payload) != 8:
            raise _ConnectionError(_PROTOCOL_ERROR, "a malformed PING")
        if not flags & _ACK:
            self._out.append(_frame(_PING, _ACK, 0, payload))

    def _on_window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(_FRAME_SIZE_ERROR, "WINDOW_UPDATE of a bad size")
        increment = struct.unpack(">I", payload)[0] & _MAX_WINDOW
        if stream_id == 0:
            self._send_window += increment
            if self._send_window > _MAX_WINDOW:
                raise _ConnectionError(_FLOW_CONTROL_ERROR, "the connection's window overflows")
            self._pump_all()
        elif (stream := self.streams.get(stream_id)) is not None:
            stream.send_window += increment
            self.pump(stream)

    def _on_push_promise(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise _ConnectionError(_PROTOCOL_ERROR, "PUSH_PROMISE from a client")

    _FRAMES: dict[int, Callable[[_Connection, int, int, bytes], None]] = {
        _DATA: _on_data,
        _HEADERS: _on_headers,
        _RST_STREAM: _on_rst_stream,
        _SETTINGS: _on_settings,
        _PUSH_PROMISE: _on_push_promise,
        _PING: _on_ping,
        _WINDOW_UPDATE: _on_window_update,
        _CONTINUATION: _on_continuation,
        # PRIORITY and GOAWAY ask nothing of a server that answers what it was asked
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
            except _TooBig as exc:
                stream.finish(StatusCode.RESOURCE_EXHAUSTED, str(exc))
                return
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
            self._out.append(_frame(_RST_STREAM, 0, stream.id, struct.pack(">I", _NO_ERROR)))
            self._forget(stream)
            self.flush()
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

    def send_headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        """A header block, in a HEADERS frame and as many CONTINUATIONs as the client's largest frame needs."""
        flags = _END_STREAM if end_stream else 0
        limit = self._max_frame
        if len(block) <= limit:
            self._out.append(_frame(_HEADERS, flags | _END_HEADERS, stream_id, block))
            return
        self._out.append(_frame(_HEADERS, flags, stream_id, block[:limit]))
        for at in range(limit, len(block), limit):
            last = at + limit >= len(block)
            self._out.append(_frame(_CONTINUATION, _END_HEADERS if last else 0, stream_id, block[at:at + limit]))

    def pump(self, stream: _Stream) -> None:
        """Send what `stream` has queued as far as the windows allow, then its status once all has left."""
        if stream.gone or stream.ended:
            return
        if stream.outbox:
            window = min(self._send_window, stream.send_window)
            sent = 0
            outbox = stream.outbox
            while sent < len(outbox) and window > 0:
                size = min(window, self._max_frame, len(outbox) - sent)
                self._out.append(_frame(_DATA, 0, stream.id, bytes(outbox[sent:sent + size])))
                sent += size
                window -= size
            del outbox[:sent]
            self._send_window -= sent
            stream.send_window -= sent
        if not stream.outbox:
            if stream.drained is not None:
                stream.drained.set()
            if stream.trailers is not None:
                self.send_headers(stream.id, stream.trailers, end_stream=True)
                stream.trailers = None
                stream.ended = True
        self.flush()
        if stream.ended and stream.handled:
            self._forget(stream)

    def _pump_all(self) -> None:
        for stream in list(self.streams.values()):
            if stream.outbox or stream.trailers is not None:
                self.pump(stream)

    def flush_soon(self) -> None:
        """Flush after what the loop runs next: an RPC that answers at once (most do) then sends its answer with
        what the connection owes the client (PING and SETTINGS acks, window updates) in one write, not two."""
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_pending = False
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(data)

    def goaway(self) -> None:
        """Tell the client that no stream after the last one it opened will be served; those go on."""
        self._out.append(_frame(_GOAWAY, 0, 0, struct.pack(">II", self.highest, _NO_ERROR)))
        self.flush()

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
