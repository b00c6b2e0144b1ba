"""ttrpc's wire: the 10-byte frame header, the Request/Response envelopes and the status codes.

A frame is `length (4) | stream id (4) | type (1) | flags (1)`, big-endian, then `length` bytes of data; data over
4 MiB is refused (the receiver discards it and answers that stream with RESOURCE_EXHAUSTED). Client streams have
odd ids. A unary call is one Request frame (a `Request` envelope: service, method, payload, timeout, metadata) and
one Response frame (a `Response` envelope: status, payload). The envelopes are the ones of ttrpc's request.proto
(ttrpc v1.2); `Status` is google.rpc.Status with its `details` kept as raw bytes (crisp never reads them).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

from runtime import errors, protodesc
from runtime.ttrpc.streams import ByteStream

HEADER = struct.Struct(">IIBB")
HEADER_SIZE = HEADER.size  # 10
MAX_DATA = 4 << 20

TYPE_REQUEST, TYPE_RESPONSE, TYPE_DATA = 1, 2, 3
FLAG_REMOTE_CLOSED, FLAG_REMOTE_OPEN, FLAG_NO_DATA = 0x1, 0x2, 0x4


class Code(enum.IntEnum):
    """google.rpc.Code, the status codes ttrpc carries (those of gRPC)."""

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


# crisp's error kinds as status codes: the one table, for crispd's gRPC answers and for ttrpc's (most specific
# kinds first: the first the error is an instance of wins)
KIND_CODES: tuple[tuple[type[errors.CrispError], Code], ...] = (
    (errors.NotFound, Code.NOT_FOUND), (errors.AlreadyExists, Code.ALREADY_EXISTS),
    (errors.InvalidArgument, Code.INVALID_ARGUMENT), (errors.FailedPrecondition, Code.FAILED_PRECONDITION),
    (errors.Unavailable, Code.UNAVAILABLE), (errors.ResourceExhausted, Code.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, Code.DEADLINE_EXCEEDED), (errors.Unimplemented, Code.UNIMPLEMENTED),
    (errors.Cancelled, Code.CANCELLED),
)


def code_of(exc: BaseException, unexpected: Code) -> Code:
    """The status code of an error's kind; `unexpected` for anything that is not one of the kinds (gRPC answers
    INTERNAL, ttrpc UNKNOWN)."""
    for kind, code in KIND_CODES:
        if isinstance(exc, kind):
            return code
    return unexpected


class TtrpcError(errors.CrispError):
    """A call answered with a non-OK status (or failed on its way: the connection closed, the deadline passed)."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = code
        self.detail = message


class ConnectionClosed(TtrpcError):
    """The connection ended before the call was answered."""

    def __init__(self, message: str = "ttrpc: closed") -> None:
        super().__init__(Code.UNAVAILABLE, message)


class ProtocolError(errors.CrispError):
    """The peer broke the framing: the connection cannot go on."""


@dataclass(frozen=True)
class Frame:
    stream_id: int
    type: int
    flags: int
    data: bytes
    oversized: int = 0  # the length of a discarded over-size message (data is then empty)


async def read_frame(stream: ByteStream) -> Frame:
    """The next frame; an over-size one is read past and returned without its data. IncompleteReadError at the
    end of the stream."""
    length, stream_id, type_, flags = HEADER.unpack(await stream.readexactly(HEADER_SIZE))
    if length > MAX_DATA:
        left = length
        while left:
            left -= len(await stream.readexactly(min(left, 1 << 16)))
        return Frame(stream_id, type_, flags, b"", oversized=length)
    return Frame(stream_id, type_, flags, await stream.readexactly(length) if length else b"")


def encode_frame(stream_id: int, type_: int, flags: int, data: bytes) -> bytes:
    if len(data) > MAX_DATA:
        raise TtrpcError(Code.RESOURCE_EXHAUSTED,
                         f"message length {len(data)} exceed maximum message size of {MAX_DATA}")
    return HEADER.pack(len(data), stream_id, type_, flags) + data


_FILE = protodesc.build_file("ttrpc/request.proto", "ttrpc", {
    "Request": "string service = 1; string method = 2; bytes payload = 3; int64 timeout_nano = 4;"
               "repeated KeyValue metadata = 5;",
    "Response": "Status status = 1; bytes payload = 2;",
    "Status": "int32 code = 1; string message = 2; repeated bytes details = 3;",
    "StringList": "repeated string list = 1;",
    "KeyValue": "string key = 1; string value = 2;",
})
_, _CLASSES = protodesc.message_classes(_FILE)
Request: Any = _CLASSES["Request"]
Response: Any = _CLASSES["Response"]
Status: Any = _CLASSES["Status"]
KeyValue: Any = _CLASSES["KeyValue"]
