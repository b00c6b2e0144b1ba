"""What the tests of crispd's gRPC server share (test_rpcserver.py, test_server.py): a server with the test's
methods on a unix socket of its own, and the status a call ended with, as a grpc client saw it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterable
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from cri.rpcserver import Method, Server


def identity(b: bytes) -> bytes:
    """The methods' (de)serializer: the tests speak bytes."""
    return b


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, methods: Iterable[Method], max_message_bytes: int = 16 << 20
                  ) -> AsyncIterator[tuple[Server, Path]]:
    """The server listening on `tmp_path`/t.sock, stopped at the end: (server, socket)."""
    server = Server(max_message_bytes=max_message_bytes)
    server.add(methods)
    sock = tmp_path / "t.sock"
    await server.listen(sock)
    try:
        yield server, sock
    finally:
        await server.stop(None)


async def status(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    """How a call ended: its code and details (OK and "" for an answer)."""
    try:
        await call
    except aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""
