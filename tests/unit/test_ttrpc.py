"""ttrpc over real unix sockets: framing, concurrent calls, statuses, deadlines, size limits, connection loss, and
NRI's multiplexer carrying a client and a server over one socket."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from runtime import errors
from runtime.ttrpc import mux, wire
from runtime.ttrpc.client import Client
from runtime.ttrpc.server import Server, unary
from runtime.ttrpc.streams import SocketStream

SERVICE = "test.Echo"


async def _pair() -> tuple[SocketStream, SocketStream]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ra, wa = await asyncio.open_unix_connection(sock=a)
    rb, wb = await asyncio.open_unix_connection(sock=b)
    return SocketStream(ra, wa), SocketStream(rb, wb)


def _echo_server(log: list[str] | None = None) -> Server:
    async def echo(request: Any) -> Any:
        delay, _, text = request.key.partition(":")
        try:
            await asyncio.sleep(float(delay or 0))
        except asyncio.CancelledError:
            if log is not None:
                log.append(f"cancelled {text}")
            raise
        if text == "notfound":
            raise errors.NotFound("no such thing as notfound")
        if text == "boom":
            raise RuntimeError("boom")
        if text == "huge":
            return wire.KeyValue(key="x" * (wire.MAX_DATA + 1))
        return wire.KeyValue(key=text, value=request.value.upper())
    return Server({SERVICE: {"Echo": unary(wire.KeyValue, echo)}})


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


async def _call(client: Client, key: str, value: str = "", time_limit: float | None = None) -> Any:
    return await client.call(SERVICE, "Echo", wire.KeyValue(key=key, value=value), wire.KeyValue, time_limit)


def test_frame_and_envelope_bytes() -> None:
    assert wire.encode_frame(1, wire.TYPE_REQUEST, 0, b"abc") == b"\0\0\0\x03\0\0\0\x01\x01\x00abc"
    # field numbers of ttrpc's request.proto: service 1, method 2, payload 3, timeout_nano 4
    request = wire.Request(service="s", method="m", payload=b"p", timeout_nano=5)
    assert request.SerializeToString() == b"\x0a\x01s\x12\x01m\x1a\x01p\x20\x05"
    response = wire.Response(status=wire.Status(code=5, message="x"), payload=b"y")
    assert response.SerializeToString() == b"\x0a\x05\x08\x05\x12\x01x\x12\x01y"
    with pytest.raises(wire.TtrpcError) as raised:
        wire.encode_frame(1, wire.TYPE_REQUEST, 0, bytes(wire.MAX_DATA + 1))
    assert raised.value.code == wire.Code.RESOURCE_EXHAUSTED


def test_concurrent_calls_are_answered_in_any_order() -> None:
    async def scenario() -> None:
        near, far = await _pair()
        serving = asyncio.create_task(_echo_server().serve(far))
        client = Client(near)
        client.start()
        answers = await asyncio.gather(*(_call(client, f"{0.05 * (5 - i)}:k{i}", f"v{i}") for i in range(5)))
        assert [(a.key, a.value) for a in answers] == [(f"k{i}", f"V{i}") for i in range(5)]
        await client.close()
        await serving  # the server ends when its peer closes
    _run(scenario)


def test_statuses_deadlines_and_limits() -> None:
    async def scenario() -> None:
        near, far = await _pair()
        log: list[str] = []
        serving = asyncio.create_task(_echo_server(log).serve(far))
        client = Client(near)
        client.start()
        with pytest.raises(wire.TtrpcError) as raised:
            await client.call(SERVICE, "Nope", wire.KeyValue(), wire.KeyValue)
        assert raised.value.code == wire.Code.UNIMPLEMENTED
        with pytest.raises(wire.TtrpcError) as raised:
            await client.call("other.Service", "Echo", wire.KeyValue(), wire.KeyValue)
        assert raised.value.code == wire.Code.UNIMPLEMENTED
        with pytest.raises(wire.TtrpcError) as raised:
            await _call(client, "0:notfound")
        assert raised.value.code == wire.Code.NOT_FOUND and "no such thing" in raised.value.detail
        with pytest.raises(wire.TtrpcError) as raised:
            await _call(client, "0:boom")
        assert raised.value.code == wire.Code.UNKNOWN and raised.value.detail == "boom"
        # the deadline travels with the request: the server cancels the handler when it passes
        with pytest.raises(wire.TtrpcError) as raised:
            await _call(client, "5:slow", time_limit=0.2)
        assert raised.value.code == wire.Code.DEADLINE_EXCEEDED
        for _ in range(50):
            if log:
                break
            await asyncio.sleep(0.02)
        assert log == ["cancelled slow"]
        # an answer over 4 MiB is replaced by RESOURCE_EXHAUSTED; a request over it never leaves
        with pytest.raises(wire.TtrpcError) as raised:
            await _call(client, "0:huge")
        assert raised.value.code == wire.Code.RESOURCE_EXHAUSTED
        with pytest.raises(wire.TtrpcError) as raised:
            await _call(client, "0:big", "v" * (wire.MAX_DATA + 10))
        assert raised.value.code == wire.Code.RESOURCE_EXHAUSTED
        assert (await _call(client, "0:still", "fine")).value == "FINE"  # the connection goes on
        await client.close()
        await serving
    _run(scenario)


def test_server_skips_an_oversized_frame_and_answers_it() -> None:
    async def scenario() -> None:
        near, far = await _pair()
        serving = asyncio.create_task(_echo_server().serve(far))
        request = wire.Request(service=SERVICE, method="Echo", payload=wire.KeyValue(key="0:k").SerializeToString())
        await near.write(wire.HEADER.pack(wire.MAX_DATA + 1, 1, wire.TYPE_REQUEST, 0) + bytes(wire.MAX_DATA + 1))
        await near.write(wire.encode_frame(3, wire.TYPE_REQUEST, 0, request.SerializeToString()))
        first, second = await wire.read_frame(near), await wire.read_frame(near)
        assert (first.stream_id, second.stream_id) == (1, 3)
        assert wire.Response.FromString(first.data).status.code == wire.Code.RESOURCE_EXHAUSTED
        answer = wire.Response.FromString(second.data)
        assert answer.status.code == wire.Code.OK and wire.KeyValue.FromString(answer.payload).key == "k"
        near.close()
        await serving
    _run(scenario)


def test_connection_loss_ends_waiting_calls() -> None:
    async def scenario() -> None:
        near, far = await _pair()
        closed: list[bool] = []
        client = Client(near, on_close=lambda: closed.append(True))
        client.start()
        waiting = asyncio.create_task(_call(client, "0:k"))
        await wire.read_frame(far)  # the request arrived; the peer goes away without answering
        far.close()
        with pytest.raises(wire.ConnectionClosed):
            await waiting
        assert closed == [True] and client.closed
        with pytest.raises(wire.ConnectionClosed):
            await _call(client, "0:k")
    _run(scenario)


async def _mux_pair() -> tuple[mux.Mux, mux.Mux, list[str]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reasons: list[str] = []
    left = mux.Mux(*await asyncio.open_unix_connection(sock=a), on_close=reasons.append)
    right = mux.Mux(*await asyncio.open_unix_connection(sock=b))
    return left, right, reasons


def test_mux_carries_a_client_and_a_server_each_way() -> None:
    """As NRI does: connection 1 is served by the plugin side, connection 2 by the runtime side."""
    async def scenario() -> None:
        runtime, plugin, _ = await _mux_pair()
        runtime_client, plugin_client = Client(runtime.open(1)), Client(plugin.open(2))
        serve_plugin = asyncio.create_task(_echo_server().serve(plugin.open(1)))
        serve_runtime = asyncio.create_task(_echo_server().serve(runtime.open(2)))
        for side in (runtime, plugin, runtime_client, plugin_client):
            side.start()
        big = "b" * (3 << 20)  # one ttrpc frame cut into mux chunks by the stream's writer
        to_plugin, to_runtime = await asyncio.gather(_call(runtime_client, "0:a", big), _call(plugin_client, "0:b"))
        assert (to_plugin.key, len(to_plugin.value), to_runtime.key) == ("a", len(big), "b")
        runtime.close()
        await asyncio.gather(serve_plugin, serve_runtime)
        assert plugin.closed
    _run(scenario)


def test_mux_chunk_format_and_limits() -> None:
    async def scenario() -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        reasons: list[str] = []
        trunk = mux.Mux(*await asyncio.open_unix_connection(sock=a), on_close=reasons.append)
        raw_reader, raw_writer = await asyncio.open_unix_connection(sock=b)
        conn = trunk.open(2)
        trunk.start()
        await conn.write(b"hello")
        assert await raw_reader.readexactly(13) == struct.pack(">II", 2, 5) + b"hello"
        # a long write goes out in chunks NRI's Go reader takes (its ttrpc reads through a 4 KiB buffer)
        await conn.write(bytes(10000))
        sizes = []
        for _ in range(3):
            conn_id, length = struct.unpack(">II", await raw_reader.readexactly(8))
            await raw_reader.readexactly(length)
            sizes.append((conn_id, length))
        assert sizes == [(2, 4096), (2, 4096), (2, 1808)]
        # a chunk for a connection nobody opened is dropped; the next one for ours arrives
        raw_writer.write(struct.pack(">II", 7, 3) + b"xyz" + struct.pack(">II", 2, 2) + b"ok")
        assert await conn.readexactly(2) == b"ok"
        # a chunk longer than a ttrpc frame can be breaks the trunk
        raw_writer.write(struct.pack(">II", 2, mux.MAX_CHUNK + 1))
        await raw_writer.drain()
        with pytest.raises(asyncio.IncompleteReadError):
            await conn.readexactly(1)
        assert trunk.closed and "over the limit" in reasons[0]
        raw_writer.close()
    _run(scenario)


def test_mux_reader_too_far_behind_breaks_the_trunk() -> None:
    async def scenario() -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        reasons: list[str] = []
        trunk = mux.Mux(*await asyncio.open_unix_connection(sock=a), on_close=reasons.append, buffer_limit=10)
        _, raw_writer = await asyncio.open_unix_connection(sock=b)
        trunk.open(1)
        trunk.start()
        raw_writer.write(struct.pack(">II", 1, 8) + b"12345678" + struct.pack(">II", 1, 8) + b"12345678")
        await raw_writer.drain()
        await trunk.wait_closed()
        assert "more than 10 bytes behind" in reasons[0]
        raw_writer.close()
    _run(scenario)
