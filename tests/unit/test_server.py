"""The RPC guard, in crispd's gRPC server (cri/rpcserver.py) on a unix socket with a real grpc client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from cri.metrics import Metrics
from cri.rpcserver import Method, StatusCode
from cri.server import Readiness, RpcGuard
from runtime import errors
from tests.unit.rpctools import identity, serving, status


async def _ok(request: bytes, context: Any) -> bytes:
    return b"ok:" + request


async def _not_found(request: bytes, context: Any) -> bytes:
    raise errors.NotFound("pod 1234 not found")


async def _bug(request: bytes, context: Any) -> bytes:
    raise KeyError("oops")


async def _aborts(request: bytes, context: Any) -> bytes:
    await context.abort(StatusCode.OUT_OF_RANGE, "own status")
    return b""


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"one"
    yield b"two"
    raise errors.FailedPrecondition("stream broke")


async def _with_server(tmp_path: Path, body: Callable[[aio.Channel, Readiness, Metrics], Awaitable[None]]) -> None:
    readiness, metrics = Readiness(), Metrics()
    guard = RpcGuard(readiness, metrics)
    methods = [guard.wrap(Method("test.Svc", name, fn, identity, identity))
               for name, fn in {"Ok": _ok, "NotFound": _not_found, "Bug": _bug, "Aborts": _aborts}.items()]
    methods.append(guard.wrap(Method("test.Svc", "Stream", _stream, identity, identity, streaming=True)))
    async with serving(tmp_path, methods) as (_, sock), aio.insecure_channel(f"unix:{sock}") as channel:
        await body(channel, readiness, metrics)


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


def test_guard(tmp_path: Path) -> None:
    async def body(channel: aio.Channel, readiness: Readiness, metrics: Metrics) -> None:
        ok = channel.unary_unary("/test.Svc/Ok")
        code, details = await status(ok(b"x"))
        assert code is grpc.StatusCode.UNAVAILABLE and "crispd is starting" in details
        code, details = await status(_drain(channel.unary_stream("/test.Svc/Stream")(b"")))
        assert code is grpc.StatusCode.UNAVAILABLE and details == "Stream: crispd is starting"

        readiness.set_ready()
        assert await ok(b"x") == b"ok:x"
        assert await status(channel.unary_unary("/test.Svc/NotFound")(b"")) == (
            grpc.StatusCode.NOT_FOUND, "pod 1234 not found")
        code, details = await status(channel.unary_unary("/test.Svc/Bug")(b""))
        assert code is grpc.StatusCode.INTERNAL and "Bug: internal error" in details
        assert await status(channel.unary_unary("/test.Svc/Aborts")(b"")) == (grpc.StatusCode.OUT_OF_RANGE,
                                                                              "own status")
        stream = channel.unary_stream("/test.Svc/Stream")(b"")
        got = []
        with pytest.raises(aio.AioRpcError) as info:
            async for item in stream:
                got.append(item)
        assert got == [b"one", b"two"]
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION

        def sample(name: str, method: str, kind: str = "unary", **labels: str) -> float:
            value = metrics.registry.get_sample_value(name, {"grpc_type": kind, "grpc_service": "test.Svc",
                                                             "grpc_method": method, **labels})
            return value or 0.0

        # go-grpc-prometheus's names, labels and code spellings
        assert sample("grpc_server_handled_total", "Ok", grpc_code="OK") == 1
        assert sample("grpc_server_handled_total", "Ok", grpc_code="Unavailable") == 1
        assert sample("grpc_server_handled_total", "NotFound", grpc_code="NotFound") == 1
        assert sample("grpc_server_handled_total", "Bug", grpc_code="Internal") == 1
        assert sample("grpc_server_handled_total", "Aborts", grpc_code="OutOfRange") == 1
        assert sample("grpc_server_handled_total", "Stream", "server_stream", grpc_code="FailedPrecondition") == 1
        assert sample("grpc_server_handled_total", "Stream", "server_stream", grpc_code="Unavailable") == 1
        assert sample("grpc_server_started_total", "Ok") == sample("grpc_server_msg_received_total", "Ok") == 2
        assert sample("grpc_server_msg_sent_total", "Ok") == 1  # the refused call sent nothing
        assert sample("grpc_server_msg_sent_total", "Stream", "server_stream") == 2
        assert sample("grpc_server_handling_seconds_count", "Ok") == 2
        assert metrics.registry.get_sample_value("grpc_server_handled_created", {}) is None
        assert not [s.name for m in metrics.registry.collect() for s in m.samples if s.name.endswith("_created")]

        readiness.set_not_ready("crispd is stopping")
        assert await status(ok(b"x")) == (grpc.StatusCode.UNAVAILABLE, "Ok: crispd is stopping")

    asyncio.run(_with_server(tmp_path, body))
