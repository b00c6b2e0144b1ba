"""crispd's gRPC server (cri/rpcserver.py) against a real grpc client on a unix socket: what a kubelet's calls need
of it besides answers (deadlines, cancellation, flow control, compression, size limits, a graceful stop)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from cri.rpcserver import Context, Method, Server, StatusCode
from tests.unit.rpctools import identity, serving, status

BIG = 5 * 1024 * 1024 + 17  # more than a frame, a window, and grpc's default message limit on neither side


class Probe:
    """What the handlers saw, for the tests to check."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.entered = asyncio.Event()
        self.remaining: float | None = None
        self.entries = 0
        self.two_in = asyncio.Event()
        self.finished = 0


def _methods(probe: Probe) -> list[Method]:
    async def echo(request: bytes, context: Context) -> bytes:
        return request

    async def size(request: bytes, context: Context) -> bytes:
        return str(len(request)).encode()

    async def double(request: bytes, context: Context) -> bytes:
        return request * 2

    async def big(request: bytes, context: Context) -> bytes:
        return bytes(range(256)) * (BIG // 256) + b"end"

    async def slow(request: bytes, context: Context) -> bytes:
        probe.remaining = context.time_remaining()
        probe.entered.set()
        probe.entries += 1
        if probe.entries == 2:
            probe.two_in.set()
        try:
            await asyncio.sleep(float(request or b"30"))
        except asyncio.CancelledError:
            probe.cancelled.set()
            raise
        probe.finished += 1
        return b"done"

    async def aborts(request: bytes, context: Context) -> bytes:
        await context.abort(StatusCode.FAILED_PRECONDITION, request.decode())

    async def chunks(request: bytes, context: Context) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield bytes([i]) * (2 * 1024 * 1024)

    async def writes(request: bytes, context: Context) -> None:
        for i in range(3):
            await context.write(b"w%d" % i)

    async def gives_up(request: bytes, context: Context) -> None:
        for i in range(1000):
            try:
                await asyncio.wait_for(context.write(bytes([i % 256]) * (1 << 20)), 0.2)
            except TimeoutError:
                await context.abort(StatusCode.RESOURCE_EXHAUSTED, f"gave up on write {i}")

    unary = {"Echo": echo, "Size": size, "Double": double, "Big": big, "Slow": slow, "Aborts": aborts}
    streams = {"Chunks": chunks, "Writes": writes, "GivesUp": gives_up}
    return [Method("test.T", name, fn, identity, identity) for name, fn in unary.items()] + [
        Method("test.T", name, fn, identity, identity, streaming=True) for name, fn in streams.items()]


async def _serve(tmp_path: Path, body: Callable[[Server, Path, Probe], Awaitable[None]],
                 max_message_bytes: int = 16 << 20) -> None:
    probe = Probe()
    async with serving(tmp_path, _methods(probe), max_message_bytes) as (server, sock):
        await body(server, sock, probe)


def _channel(sock: Path, **kwargs: Any) -> aio.Channel:
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    return aio.insecure_channel(f"unix:{sock}", options=options, **kwargs)


def test_answers_errors_and_unknown_methods(tmp_path: Path) -> None:
    async def body(server: Server, sock: Path, probe: Probe) -> None:
        async with _channel(sock) as channel:
            assert await channel.unary_unary("/test.T/Echo")(b"hello") == b"hello"
            assert await channel.unary_unary("/test.T/Echo")(b"") == b""
            # many calls at once on one connection
            answers = await asyncio.gather(*(channel.unary_unary("/test.T/Echo")(b"%d" % i) for i in range(200)))
            assert answers == [b"%d" % i for i in range(200)]
            code, details = await status(channel.unary_unary("/test.T/Nope")(b""))
            assert code is grpc.StatusCode.UNIMPLEMENTED and "/test.T/Nope" in details
            # details travel percent-encoded and arrive as they were
            code, details = await status(channel.unary_unary("/test.T/Aborts")("50% grün\nnext".encode()))
            assert (code, details) == (grpc.StatusCode.FAILED_PRECONDITION, "50% grün\nnext")

    asyncio.run(_serve(tmp_path, body))


def test_large_messages_both_ways_and_the_limit(tmp_path: Path) -> None:
    async def body(server: Server, sock: Path, probe: Probe) -> None:
        async with _channel(sock) as channel:
            answer = await channel.unary_unary("/test.T/Big")(b"")
            assert len(answer) == BIG // 256 * 256 + 3 and answer.endswith(b"end")
            assert answer[:256] == bytes(range(256))
            assert await channel.unary_unary("/test.T/Size")(b"x" * (6 << 20)) == str(6 << 20).encode()
            code, details = await status(channel.unary_unary("/test.T/Size")(b"x" * (7 << 20)))
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "request is larger" in details, details
            # an answer over the limit is refused too
            code, details = await status(channel.unary_unary("/test.T/Double")(b"x" * (4 << 20)))
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "answer is larger" in details, details
            # the connection is still good
            assert await channel.unary_unary("/test.T/Echo")(b"after") == b"after"

    asyncio.run(_serve(tmp_path, body, max_message_bytes=(6 << 20) + 10))


def test_compressed_requests(tmp_path: Path) -> None:
    async def body(server: Server, sock: Path, probe: Probe) -> None:
        for compression in (grpc.Compression.Gzip, grpc.Compression.Deflate):
            async with _channel(sock, compression=compression) as channel:
                assert await channel.unary_unary("/test.T/Size")(b"z" * 100000) == b"100000"
                # small on the wire, over the limit once inflated: refused, never inflated whole
                code, details = await status(channel.unary_unary("/test.T/Size")(b"z" * (2 << 20)))
                assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "once inflated" in details, details

    asyncio.run(_serve(tmp_path, body, max_message_bytes=1 << 20))


def test_a_stream_waits_for_a_slow_reader(tmp_path: Path) -> None:
    async def body(server: Server, sock: Path, probe: Probe) -> None:
        async with _channel(sock) as channel:
            got = []

            async def read() -> None:
                async for item in channel.unary_stream("/test.T/Chunks")(b"8"):  # 16 MB: beyond every window
                    got.append(item)
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(read(), 60)
            assert [len(item) for item in got] == [2 * 1024 * 1024] * 8
            assert [item[0] for item in got] == list(range(8))
            assert [item async for item in channel.unary_stream("/test.T/Writes")(b"")] == [b"w0", b"w1", b"w2"]

    asyncio.run(_serve(tmp_path, body))


def test_a_write_given_up_on_still_leaves_whole(tmp_path: Path) -> None:
    """A streaming handler that gives up on a write its client does not take (as a slow event subscriber is
    dropped) ends with its own status, after the message it began, whole: a client that takes nothing for a while
    (a bare HTTP/2 client that opens no window meanwhile) then gets the message and the status."""
    async def body(server: Server, sock: Path, probe: Probe) -> None:
        got, data = await asyncio.wait_for(_raw_call(sock, b"/test.T/GivesUp", b"", ack_after=1.0), 20)
        assert got[b"grpc-status"] == b"8" and got[b"grpc-message"] == b"gave up on write 0", got
        assert len(data) == 5 + (1 << 20) and data[:5] == b"\0" + (1 << 20).to_bytes(4, "big"), len(data)

    asyncio.run(_serve(tmp_path, body))


def test_deadline_cancels_the_handler(tmp_path: Path) -> None:
    async def body(server: Server, sock: Path, probe: Probe) -> None:
        async with _channel(sock) as channel:
            code, _ = await status(channel.unary_unary("/test.T/Slow")(b"30", timeout=0.5))
            assert code is grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.wait_for(probe.cancelled.wait(), 5)
            # the client sends what is left of its 0.5 s, rounded up to the header's unit (a few us over, seen in CI)
            assert probe.remaining is not None and 0 < probe.remaining <= 0.51
            assert not any(connection.streams for connection in server.connections)
            # no deadline: none remaining, and the call runs to its end
            assert await channel.unary_unary("/test.T/Slow")(b"0.01") == b"done"
            assert probe.remaining is None

    asyncio.run(_serve(tmp_path, body))


async def _raw_call(sock: Path, path: bytes, message: bytes, *headers: tuple[bytes, bytes], ack_after: float = 0.0,
                    pad: int | None = None, priority: bool = False) -> tuple[dict[bytes, bytes], bytes]:
    """One call by a bare HTTP/2 client that never resets its stream: (headers and trailers, the data). It opens
    no flow-control window for `ack_after` seconds (the data the first windows allow is all it gets meanwhile)."""
    import h2.config
    import h2.connection
    import h2.events

    reader, writer = await asyncio.open_unix_connection(str(sock))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", b"x"),
                          (b"content-type", b"application/grpc"), (b"te", b"trailers"), *headers],
                      priority_weight=200 if priority else None)
    framed = b"\0" + len(message).to_bytes(4, "big") + message
    step = conn.max_outbound_frame_size - 256
    for at in range(0, len(framed), step):
        conn.send_data(1, framed[at:at + step], end_stream=at + step >= len(framed), pad_length=pad)
    writer.write(conn.data_to_send())
    got: dict[bytes, bytes] = {}
    data = b""
    unacknowledged = 0
    acknowledge_at = time.monotonic() + ack_after
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.1)
            except TimeoutError:
                chunk = None
            if chunk == b"":
                break
            for event in conn.receive_data(chunk or b""):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    got.update(dict(event.headers))
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    unacknowledged += event.flow_controlled_length
                elif isinstance(event, h2.events.StreamEnded):
                    return got, data
            if unacknowledged and time.monotonic() >= acknowledge_at:
                conn.acknowledge_received_data(unacknowledged, 1)
                unacknowledged = 0
            writer.write(conn.data_to_send())
    finally:
        writer.close()
    return got, data


def test_the_servers_own_deadline(tmp_path: Path) -> None:
    """A client that never cancels still gets DEADLINE_EXCEEDED at its deadline, and the handler is stopped."""
    async def body(server: Server, sock: Path, probe: Probe) -> None:
        began = time.monotonic()
        got, _ = await asyncio.wait_for(_raw_call(sock, b"/test.T/Slow", b"30", (b"grpc-timeout", b"300m")), 10)
        assert got[b"grpc-status"] == b"4"
        assert 0.25 < time.monotonic() - began < 5
        await asyncio.wait_for(probe.cancelled.wait(), 5)
        got, data = await asyncio.wait_for(_raw_call(sock, b"/test.T/Echo", b"raw"), 10)
        assert (got[b"grpc-status"], data) == (b"0", b"\0\0\0\0\3raw")

    asyncio.run(_serve(tmp_path, body))


def test_padding_priorities_and_header_blocks_in_pieces(tmp_path: Path) -> None:
    """What a client may send and a gRPC client seldom does: padded DATA, HEADERS with a priority, a header block
    over one frame (CONTINUATIONs); and an answer's status over one frame."""
    async def body(server: Server, sock: Path, probe: Probe) -> None:
        got, data = await asyncio.wait_for(_raw_call(sock, b"/test.T/Echo", b"padded", pad=40, priority=True), 10)
        assert (got[b"grpc-status"], data) == (b"0", b"\0\0\0\0\6padded")
        # a client that takes frames of 16 KiB at most (HTTP/2's default; grpc-go's) gets a long status in pieces
        long = "-".join(["why"] * 10000)
        got, _ = await asyncio.wait_for(_raw_call(sock, b"/test.T/Aborts", long.encode()), 10)
        assert (got[b"grpc-status"], got[b"grpc-message"]) == (b"9", long.encode())
        options = [("grpc.max_metadata_size", 1 << 20)]
        async with _channel(sock) as plain, aio.insecure_channel(f"unix:{sock}", options=options) as channel:
            metadata = (("x-big", "m" * 40000), ("x-other", "o" * 20000))
            assert await channel.unary_unary("/test.T/Echo")(b"big headers", metadata=metadata) == b"big headers"
            assert await status(channel.unary_unary("/test.T/Aborts")(long.encode())) == (
                grpc.StatusCode.FAILED_PRECONDITION, long)
            # the decoder's table followed the client's through all of it
            assert await plain.unary_unary("/test.T/Echo")(b"after") == b"after"
            assert await channel.unary_unary("/test.T/Echo")(b"after") == b"after"

    asyncio.run(_serve(tmp_path, body))


def test_a_client_cancel_cancels_the_handler(tmp_path: Path) -> None:
    async def body(server: Server, sock: Path, probe: Probe) -> None:
        async with _channel(sock) as channel:
            call = channel.unary_unary("/test.T/Slow")(b"30")
            await asyncio.wait_for(probe.entered.wait(), 5)
            call.cancel()
            await asyncio.wait_for(probe.cancelled.wait(), 5)
        probe.cancelled.clear()
        probe.entered.clear()
        # the client goes away altogether: same
        channel = _channel(sock)
        call = channel.unary_unary("/test.T/Slow")(b"30")
        await asyncio.wait_for(probe.entered.wait(), 5)
        await channel.close()
        await asyncio.wait_for(probe.cancelled.wait(), 5)

    asyncio.run(_serve(tmp_path, body))


def test_stop_lets_calls_in_flight_finish_within_the_grace(tmp_path: Path) -> None:
    async def body(server: Server, sock: Path, probe: Probe) -> None:
        async with _channel(sock) as channel:
            short = asyncio.ensure_future(channel.unary_unary("/test.T/Slow")(b"0.3"))
            long = asyncio.ensure_future(status(channel.unary_unary("/test.T/Slow")(b"30")))
            await asyncio.wait_for(probe.two_in.wait(), 5)
            began = time.monotonic()
            await server.stop(1.0)
            assert time.monotonic() - began < 5
            assert await short == b"done"
            code, _ = await long
            assert code is grpc.StatusCode.UNAVAILABLE
            assert probe.cancelled.is_set() and probe.finished == 1
        assert not _connects(sock)
        async with _channel(sock) as channel:
            code, _ = await status(channel.unary_unary("/test.T/Echo")(b"", timeout=2))
            assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    asyncio.run(_serve(tmp_path, body))


def _connects(sock: Path) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(sock))
        except OSError:
            return False
        return True


def test_not_grpc_is_refused(tmp_path: Path) -> None:
    """An HTTP/1 request, or garbage, ends its connection; the server goes on serving."""
    async def body(server: Server, sock: Path, probe: Probe) -> None:
        for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 100):
            reader, writer = await asyncio.open_unix_connection(str(sock))
            writer.write(junk)
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) is not None  # EOF: closed by the server
            writer.close()
        async with _channel(sock) as channel:
            assert await channel.unary_unary("/test.T/Echo")(b"still") == b"still"

    asyncio.run(_serve(tmp_path, body))


@pytest.mark.parametrize("value, seconds", [(b"5S", 5.0), (b"100m", 0.1), (b"2M", 120.0), (b"7u", 7e-6),
                                            (b"", None), (b"S", None), (b"123456789S", None), (b"5x", None)])
def test_timeout_header(value: bytes, seconds: float | None) -> None:
    from cri.rpcserver import _timeout

    assert _timeout(value) == seconds


def test_crispd_does_not_import_grpcio() -> None:
    """grpcio (~12 MB of crispd's resident memory) is for clients only: nothing crispd runs imports it."""
    import subprocess
    import sys

    probe = "import sys, cri.daemon; print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'cri_api')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_status_codes_are_grpcs() -> None:
    assert [(code.name, code.value) for code in StatusCode] == [(code.name, code.value[0]) for code in grpc.StatusCode]
