"""The streaming server's pieces without a daemon: SPDY framing (checked against the tests' own framer),
tokens, protocol negotiation, window sizes, port-forward stream headers."""

from __future__ import annotations

import struct
import zlib

import pytest

from cri.streaming import portforward, remotecommand
from cri.streaming.requests import ExecRequest, PortForwardRequest
from cri.streaming.server import negotiate
from cri.streaming.spdy import frames
from cri.streaming.spdy.dictionary import DICTIONARY, DICTIONARY_ADLER32
from cri.streaming.tokens import TokenCache
from runtime import errors
from tests.cri import spdy_client


def test_dictionary_is_the_spdy3_one() -> None:
    assert len(DICTIONARY) == 1423 and zlib.adler32(DICTIONARY) == DICTIONARY_ADLER32
    assert DICTIONARY == spdy_client.DICTIONARY  # two independent spellings agree


def _client_syn_stream(deflater: zlib._Compress, stream_id: int, headers: dict[str, str], fin: bool = False) -> bytes:
    raw = struct.pack(">I", len(headers))
    for name, value in headers.items():
        raw += struct.pack(">I", len(name)) + name.encode() + struct.pack(">I", len(value)) + value.encode()
    block = deflater.compress(raw) + deflater.flush(zlib.Z_SYNC_FLUSH)
    payload = struct.pack(">IIBB", stream_id, 0, 0, 0) + block
    return struct.pack(">HHI", 0x8003, 1, ((1 if fin else 0) << 24) | len(payload)) + payload


def test_parser_reads_what_a_client_sends_in_any_pieces() -> None:
    deflater = zlib.compressobj(zdict=spdy_client.DICTIONARY)
    wire = (_client_syn_stream(deflater, 1, {"streamtype": "error"})
            + _client_syn_stream(deflater, 3, {"streamtype": "stdin", "x": "a\0b"})
            + struct.pack(">II", 3, (1 << 24) | 5) + b"hello"
            + struct.pack(">HHII", 0x8003, 6, 4, 9)                    # PING 9
            + struct.pack(">HHIII", 0x8003, 9, 8, 0, 1000)             # WINDOW_UPDATE
            + struct.pack(">HHIIII", 0x8003, 4, 12, 1, 7, 65536)       # SETTINGS
            + struct.pack(">HHIII", 0x8003, 7, 8, 3, 0))               # GOAWAY
    for piece in (1, 7, len(wire)):
        parser = frames.FrameParser()
        parsed: list[frames.Frame] = []
        for start in range(0, len(wire), piece):
            parsed += parser.feed(wire[start:start + piece])
        assert parsed == [
            frames.SynStream(1, 0, 0, False, False, {"streamtype": ["error"]}),
            frames.SynStream(3, 0, 0, False, False, {"streamtype": ["stdin"], "x": ["a", "b"]}),
            frames.DataFrame(3, True, b"hello"),
            frames.Ping(9),
            frames.WindowUpdate(0, 1000),
            frames.Settings(((0, 7, 65536),)),
            frames.GoAway(3, 0),
        ]
        assert parser.buffered == 0


def test_encoded_replies_decode_with_an_independent_inflater() -> None:
    encoder = frames.HeaderEncoder()
    inflater = zlib.decompressobj(zdict=spdy_client.DICTIONARY)
    for stream_id, headers in ((1, {}), (3, {"X-Thing": ["a", "b"]})):
        frame = frames.encode_syn_reply(encoder, stream_id, headers)
        first, second = struct.unpack_from(">II", frame)
        assert first == 0x80030002 and second & 0xFFFFFF == len(frame) - 8
        assert struct.unpack_from(">I", frame, 8)[0] == stream_id
        raw = inflater.decompress(frame[12:])
        count = struct.unpack_from(">I", raw)[0]
        assert count == len(headers)
        if headers:
            assert raw[4:].endswith(b"a\0b") and b"x-thing" in raw
    assert frames.encode_data(5, b"xy", fin=True) == struct.pack(">II", 5, (1 << 24) | 2) + b"xy"
    assert frames.encode_rst_stream(5, frames.CANCEL) == struct.pack(">HHIII", 0x8003, 3, 8, 5, 5)
    assert frames.encode_goaway(7) == struct.pack(">HHIII", 0x8003, 7, 8, 7, 0)


@pytest.mark.parametrize("wire", [
    struct.pack(">HHI", 0x8002, 6, 4) + b"\0\0\0\1",          # SPDY/2
    struct.pack(">II", 0, 1) + b"x",                           # data on stream 0
    struct.pack(">HHI", 0x8003, 1, 10) + b"\0" * 10 + b"",     # SYN_STREAM with no header block
])
def test_parser_refuses_broken_framing(wire: bytes) -> None:
    with pytest.raises(frames.SpdyProtocolError):
        frames.FrameParser().feed(wire + b"\0" * 16)


def test_header_bombs_are_refused() -> None:
    deflater = zlib.compressobj(zdict=spdy_client.DICTIONARY)
    raw = struct.pack(">II", 1, 4) + b"name" + struct.pack(">I", 10_000_000) + b"v" * 10_000_000
    block = deflater.compress(raw) + deflater.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(frames.SpdyProtocolError, match="decompresses to more than"):
        frames.HeaderDecoder().decode(block)


def test_tokens_are_single_use_expire_and_are_capped() -> None:
    now = [100.0]
    cache = TokenCache(ttl=60, capacity=2, clock=lambda: now[0])
    request = ExecRequest("c1", ("true",), False, False, True, False)
    token = cache.insert(request)
    assert len(token) >= 20 and cache.consume(token) == request
    assert cache.consume(token) is None
    first = cache.insert(request)
    cache.insert(PortForwardRequest("p1", ()))
    with pytest.raises(errors.ResourceExhausted):
        cache.insert(request)
    now[0] += 60
    assert cache.consume(first) is None          # expired
    cache.insert(request)                        # expired ones make room
    assert len(cache) == 1


def test_negotiation_follows_the_client() -> None:
    assert negotiate(["v9", "v2.channel.k8s.io", "v4.channel.k8s.io"], remotecommand.PROTOCOLS) == \
        "v2.channel.k8s.io"
    assert negotiate(["v5.channel.k8s.io"], remotecommand.PROTOCOLS) is None


def test_window_sizes() -> None:
    assert remotecommand._window_size({"Width": 80, "Height": 24}) == (80, 24)
    assert remotecommand._window_size({"width": 1, "height": 2}) == (1, 2)
    assert remotecommand._window_size({"Width": -1, "Height": 2}) is None
    assert remotecommand._window_size([80, 24]) is None


@pytest.mark.parametrize(("headers", "ports", "problem"), [
    ({"port": ["80"], "streamtype": ["data"]}, (), None),
    ({"port": ["80"], "streamtype": ["error"]}, (80, 443), None),
    ({"streamtype": ["data"]}, (), '"port" header is required'),
    ({"port": ["0"], "streamtype": ["data"]}, (), "unable to parse '0' as a port"),
    ({"port": ["x"], "streamtype": ["data"]}, (), "unable to parse 'x' as a port"),
    ({"port": ["80"]}, (), '"streamType" header is required'),
    ({"port": ["80"], "streamtype": ["stdin"]}, (), "invalid stream type 'stdin'"),
    ({"port": ["81"], "streamtype": ["data"]}, (80,), "port 81 was not requested"),
])
def test_port_forward_stream_headers(headers: dict[str, list[str]], ports: tuple[int, ...],
                                     problem: str | None) -> None:
    found = portforward.check_stream_headers(headers, ports)
    assert found == problem if problem is None else (found is not None and found.startswith(problem))
