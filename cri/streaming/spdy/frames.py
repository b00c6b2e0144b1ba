"""SPDY/3.1 framing, without I/O: parse the bytes a peer sends into frames, and encode the frames crisp sends.

A frame starts with 8 bytes. A control frame: 1 bit set, 15 bits version (3), 16 bits type, 8 bits flags, 24 bits
length. A data frame: 1 bit clear, 31 bits stream id, 8 bits flags, 24 bits length. Header blocks (SYN_STREAM,
SYN_REPLY, HEADERS) are zlib-compressed with the SPDY/3 dictionary, one compression context per direction for the
whole session: the parser owns the inflater of the incoming direction and the encoder the deflater of the outgoing
one, so frames must be parsed and encoded in the order they travel.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cri.streaming.spdy.dictionary import DICTIONARY

VERSION = 3

SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# RST_STREAM status codes
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
UNSUPPORTED_VERSION = 4
CANCEL = 5
INTERNAL_ERROR = 6
STREAM_IN_USE = 8
STREAM_ALREADY_CLOSED = 9

# GOAWAY status codes
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

MAX_LENGTH = (1 << 24) - 1          # what 24 bits of length can say
MAX_STREAM_ID = (1 << 31) - 1
# a decompressed header block larger than this ends the session (a zlib bomb, or nonsense)
MAX_HEADER_BLOCK = 256 * 1024

_HEADER = struct.Struct(">II")
_U32 = struct.Struct(">I")
_U32_PAIR = struct.Struct(">II")

Headers = dict[str, list[str]]


class SpdyProtocolError(Exception):
    """The peer broke the framing: the session cannot go on (GOAWAY with PROTOCOL_ERROR)."""


@dataclass(frozen=True, slots=True)
class DataFrame:
    stream_id: int
    fin: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class SynStream:
    stream_id: int
    associated_id: int
    priority: int
    fin: bool
    unidirectional: bool
    headers: Headers


@dataclass(frozen=True, slots=True)
class SynReply:
    stream_id: int
    fin: bool
    headers: Headers


@dataclass(frozen=True, slots=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class Settings:
    entries: tuple[tuple[int, int, int], ...]   # (flags, id, value)


@dataclass(frozen=True, slots=True)
class Ping:
    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAway:
    last_good_stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class HeadersFrame:
    stream_id: int
    fin: bool
    headers: Headers


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass(frozen=True, slots=True)
class UnknownControl:
    """A control frame type SPDY/3.1 does not define: the draft says to ignore it."""

    frame_type: int


Frame = (DataFrame | SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate
         | UnknownControl)


def _parse_header_block(raw: bytes) -> Headers:
    """An uncompressed name/value block: a 32-bit count, then per pair a 32-bit length + name and a 32-bit length
    + value, several values of one name separated by NUL. Names are lower-case on the wire."""
    view = memoryview(raw)
    try:
        (count,) = _U32.unpack_from(view, 0)
        offset = 4
        headers: Headers = {}
        for _ in range(count):
            (length,) = _U32.unpack_from(view, offset)
            offset += 4
            name = bytes(view[offset:offset + length]).decode("latin-1").lower()
            if len(name) != length or not name:
                raise SpdyProtocolError("truncated or empty header name")
            offset += length
            (length,) = _U32.unpack_from(view, offset)
            offset += 4
            value = bytes(view[offset:offset + length]).decode("latin-1")
            if len(value) != length:
                raise SpdyProtocolError(f"truncated value of header {name!r}")
            offset += length
            headers.setdefault(name, []).extend(value.split("\0"))
    except struct.error:
        raise SpdyProtocolError("truncated header block") from None
    if offset != len(raw):
        raise SpdyProtocolError(f"{len(raw) - offset} stray bytes after the header block")
    return headers


class HeaderDecoder:
    """The inflater of one direction of a session."""

    def __init__(self) -> None:
        self._inflater = zlib.decompressobj(zdict=DICTIONARY)

    def decode(self, block: bytes) -> Headers:
        try:
            raw = self._inflater.decompress(block, MAX_HEADER_BLOCK)
        except zlib.error as exc:
            raise SpdyProtocolError(f"bad compressed header block: {exc}") from None
        if self._inflater.unconsumed_tail:
            raise SpdyProtocolError(f"a header block decompresses to more than {MAX_HEADER_BLOCK} bytes")
        return _parse_header_block(raw)


class HeaderEncoder:
    """The deflater of one direction of a session; every block ends with a sync flush (byte aligned)."""

    def __init__(self) -> None:
        self._deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8,
                                          zlib.Z_DEFAULT_STRATEGY, zdict=DICTIONARY)

    def encode(self, headers: Mapping[str, str | Sequence[str]]) -> bytes:
        raw = bytearray(_U32.pack(len(headers)))
        for name, value in headers.items():
            values = [value] if isinstance(value, str) else list(value)
            encoded_name = name.lower().encode("latin-1")
            encoded_value = "\0".join(values).encode("latin-1")
            raw += _U32.pack(len(encoded_name)) + encoded_name + _U32.pack(len(encoded_value)) + encoded_value
        return self._deflater.compress(bytes(raw)) + self._deflater.flush(zlib.Z_SYNC_FLUSH)


class FrameParser:
    """Bytes in, frames out. `feed` keeps an incomplete frame until the rest arrives."""

    def __init__(self, max_frame: int = MAX_LENGTH) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame
        self._headers = HeaderDecoder()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        if data:
            self._buffer += data
        frames: list[Frame] = []
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= 8:
            first, second = _HEADER.unpack_from(buffer, offset)
            flags = second >> 24
            length = second & 0xFFFFFF
            if length > self._max_frame:
                raise SpdyProtocolError(f"a frame of {length} bytes is larger than {self._max_frame}")
            if len(buffer) - offset - 8 < length:
                break
            payload = bytes(buffer[offset + 8:offset + 8 + length])
            offset += 8 + length
            if first & 0x80000000:
                version = (first >> 16) & 0x7FFF
                if version != VERSION:
                    raise SpdyProtocolError(f"SPDY version {version} is not 3")
                frames.append(self._control(first & 0xFFFF, flags, payload))
            else:
                stream_id = first & 0x7FFFFFFF
                if stream_id == 0:
                    raise SpdyProtocolError("a data frame on stream 0")
                frames.append(DataFrame(stream_id, bool(flags & FLAG_FIN), payload))
        if offset:
            del buffer[:offset]
        return frames

    def _control(self, frame_type: int, flags: int, payload: bytes) -> Frame:
        try:
            if frame_type == SYN_STREAM:
                stream_id, associated = _U32_PAIR.unpack_from(payload, 0)
                priority = payload[8] >> 5
                return SynStream(stream_id & MAX_STREAM_ID, associated & MAX_STREAM_ID, priority,
                                 bool(flags & FLAG_FIN), bool(flags & FLAG_UNIDIRECTIONAL),
                                 self._headers.decode(payload[10:]))
            if frame_type == SYN_REPLY:
                (stream_id,) = _U32.unpack_from(payload, 0)
                return SynReply(stream_id & MAX_STREAM_ID, bool(flags & FLAG_FIN), self._headers.decode(payload[4:]))
            if frame_type == HEADERS:
                (stream_id,) = _U32.unpack_from(payload, 0)
                return HeadersFrame(stream_id & MAX_STREAM_ID, bool(flags & FLAG_FIN),
                                    self._headers.decode(payload[4:]))
            if frame_type == RST_STREAM:
                stream_id, status = _U32_PAIR.unpack_from(payload, 0)
                return RstStream(stream_id & MAX_STREAM_ID, status)
            if frame_type == SETTINGS:
                (count,) = _U32.unpack_from(payload, 0)
                if len(payload) != 4 + 8 * count:
                    raise SpdyProtocolError(f"a SETTINGS frame of {len(payload)} bytes claims {count} entries")
                entries = []
                for i in range(count):
                    flag_id, value = _U32_PAIR.unpack_from(payload, 4 + 8 * i)
                    entries.append((flag_id >> 24, flag_id & 0xFFFFFF, value))
                return Settings(tuple(entries))
            if frame_type == PING:
                (ping_id,) = _U32.unpack_from(payload, 0)
                return Ping(ping_id)
            if frame_type == GOAWAY:
                last, status = _U32_PAIR.unpack_from(payload, 0)
                return GoAway(last & MAX_STREAM_ID, status)
            if frame_type == WINDOW_UPDATE:
                stream_id, delta = _U32_PAIR.unpack_from(payload, 0)
                return WindowUpdate(stream_id & MAX_STREAM_ID, delta & 0x7FFFFFFF)
        except (struct.error, IndexError):
            raise SpdyProtocolError(f"control frame type {frame_type} is too short ({len(payload)} bytes)") \
                from None
        return UnknownControl(frame_type)


def _control_header(frame_type: int, flags: int, length: int) -> bytes:
    if length > MAX_LENGTH:
        raise ValueError(f"a SPDY frame cannot hold {length} bytes")
    return _HEADER.pack(0x80000000 | (VERSION << 16) | frame_type, (flags << 24) | length)


def encode_data(stream_id: int, data: bytes, fin: bool = False) -> bytes:
    if len(data) > MAX_LENGTH:
        raise ValueError(f"a SPDY data frame cannot hold {len(data)} bytes")
    return _HEADER.pack(stream_id & MAX_STREAM_ID, ((FLAG_FIN if fin else 0) << 24) | len(data)) + data


def encode_syn_reply(encoder: HeaderEncoder, stream_id: int, headers: Mapping[str, str | Sequence[str]],
                     fin: bool = False) -> bytes:
    block = encoder.encode(headers)
    return _control_header(SYN_REPLY, FLAG_FIN if fin else 0, 4 + len(block)) + _U32.pack(stream_id) + block


def encode_headers(encoder: HeaderEncoder, stream_id: int, headers: Mapping[str, str | Sequence[str]],
                   fin: bool = False) -> bytes:
    block = encoder.encode(headers)
    return _control_header(HEADERS, FLAG_FIN if fin else 0, 4 + len(block)) + _U32.pack(stream_id) + block


def encode_rst_stream(stream_id: int, status: int) -> bytes:
    return _control_header(RST_STREAM, 0, 8) + _U32_PAIR.pack(stream_id, status)


def encode_ping(ping_id: int) -> bytes:
    return _control_header(PING, 0, 4) + _U32.pack(ping_id)


def encode_goaway(last_good_stream_id: int, status: int = GOAWAY_OK) -> bytes:
    return _control_header(GOAWAY, 0, 8) + _U32_PAIR.pack(last_good_stream_id, status)


def encode_window_update(stream_id: int, delta: int) -> bytes:
    return _control_header(WINDOW_UPDATE, 0, 8) + _U32_PAIR.pack(stream_id, delta)


def encode_settings(entries: Sequence[tuple[int, int, int]]) -> bytes:
    body = _U32.pack(len(entries)) + b"".join(_U32_PAIR.pack((f << 24) | i, v) for f, i, v in entries)
    return _control_header(SETTINGS, 0, len(body)) + body
