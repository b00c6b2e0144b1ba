"""A ttrpc server: serves unary methods on one ByteStream, each request in a task of its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from runtime.ttrpc import wire
from runtime.ttrpc.streams import ByteStream

log = logging.getLogger(__name__)

Handler = Callable[[bytes], Awaitable[bytes]]

def unary(request_type: Any, method: Callable[[Any], Awaitable[Any]]) -> Handler:
    """A handler from a coroutine taking a request message and returning the response message."""
    async def handle(payload: bytes) -> bytes:
        try:
            request = request_type.FromString(payload)
        except Exception as exc:
            raise wire.TtrpcError(wire.Code.INVALID_ARGUMENT, f"cannot parse the request: {exc}") from None
        response = await method(request)
        return bytes(response.SerializeToString())
    return handle


def status_of(exc: BaseException) -> tuple[wire.Code, str]:
    if isinstance(exc, wire.TtrpcError):
        return exc.code, exc.detail
    return wire.code_of(exc, wire.Code.UNKNOWN), str(exc) or type(exc).__name__


class Server:
    """`services` maps a full service name (`package.Service`) to its methods' handlers."""

    def __init__(self, services: Mapping[str, Mapping[str, Handler]]) -> None:
        self._services = services

    async def serve(self, stream: ByteStream) -> None:
        """Serve until the peer closes the stream (or breaks the framing); calls still running are cancelled."""
        tasks: set[asyncio.Task[None]] = set()
        send = asyncio.Lock()
        try:
            while True:
                try:
                    frame = await wire.read_frame(stream)
                except (asyncio.IncompleteReadError, ConnectionError, OSError):
                    return
                if frame.oversized:
                    message = f"message length {frame.oversized} exceed maximum message size of {wire.MAX_DATA}"
                    await self._answer(stream, send, frame.stream_id, wire.Code.RESOURCE_EXHAUSTED, message, b"")
                    continue
                if frame.type != wire.TYPE_REQUEST:
                    continue  # no streaming RPC is served: data for one is dropped
                task = asyncio.get_running_loop().create_task(self._handle(stream, send, frame))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            for task in list(tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            stream.close()

    async def _handle(self, stream: Any, send: asyncio.Lock, frame: wire.Frame) -> None:
        try:
            request = wire.Request.FromString(frame.data)
        except Exception as exc:
            await self._answer(stream, send, frame.stream_id, wire.Code.INVALID_ARGUMENT, f"bad request: {exc}", b"")
            return
        handler = self._services.get(request.service, {}).get(request.method)
        if handler is None:
            await self._answer(stream, send, frame.stream_id, wire.Code.UNIMPLEMENTED,
                               f"{request.service}/{request.method}: not implemented", b"")
            return
        timeout = request.timeout_nano / 1e9 if request.timeout_nano > 0 else None
        try:
            async with asyncio.timeout(timeout):
                payload = await handler(request.payload)
        except TimeoutError:
            code, message, payload = wire.Code.DEADLINE_EXCEEDED, "deadline exceeded", b""
        except Exception as exc:
            code, message = status_of(exc)
            payload = b""
            if code == wire.Code.UNKNOWN:
                log.warning("ttrpc %s/%s failed: %s", request.service, request.method, exc, exc_info=exc)
        else:
            code, message = wire.Code.OK, ""
        await self._answer(stream, send, frame.stream_id, code, message, payload)

    @staticmethod
    async def _answer(stream: Any, send: asyncio.Lock, stream_id: int, code: wire.Code, message: str,
                      payload: bytes) -> None:
        response = wire.Response(status=wire.Status(code=int(code), message=message), payload=payload)
        try:
            frame = wire.encode_frame(stream_id, wire.TYPE_RESPONSE, 0, response.SerializeToString())
        except wire.TtrpcError as exc:  # the answer is over the limit: say so instead
            response = wire.Response(status=wire.Status(code=int(exc.code), message=exc.detail))
            frame = wire.encode_frame(stream_id, wire.TYPE_RESPONSE, 0, response.SerializeToString())
        with contextlib.suppress(ConnectionError, OSError):
            async with send:
                await stream.write(frame)
