"""A ttrpc client: unary calls over one ByteStream, answered in any order, each with its own deadline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from runtime.ttrpc import wire
from runtime.ttrpc.streams import ByteStream

log = logging.getLogger(__name__)


class Client:
    """Call `start()` once (it needs the running loop); `close()` ends every call still waiting with
    ConnectionClosed, as does the peer closing the stream. `on_close` runs once when the connection ends."""

    def __init__(self, stream: ByteStream, on_close: Callable[[], None] | None = None) -> None:
        self._stream = stream
        self._on_close = on_close
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._send = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def call(self, service: str, method: str, request: Any, response_type: Any,
                   time_limit: float | None = None) -> Any:
        """Send `request` (a message), wait for the answer; TtrpcError for a non-OK status, DEADLINE_EXCEEDED when
        `time_limit` seconds pass first (the limit travels with the request, so the server gives up too),
        ConnectionClosed when the connection ends."""
        if self._closed:
            raise wire.ConnectionClosed()
        stream_id = self._next_id
        self._next_id += 2
        envelope = wire.Request(service=service, method=method, payload=request.SerializeToString(),
                                timeout_nano=int(time_limit * 1e9) if time_limit else 0)
        frame = wire.encode_frame(stream_id, wire.TYPE_REQUEST, 0, envelope.SerializeToString())
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = answer
        try:
            async with asyncio.timeout(time_limit):
                async with self._send:
                    await self._stream.write(frame)
                response = await answer
        except TimeoutError:
            raise wire.TtrpcError(wire.Code.DEADLINE_EXCEEDED,
                                  f"{service}/{method}: no answer in {time_limit}s") from None
        except (ConnectionError, OSError) as exc:
            self._shut(f"ttrpc: {exc}")
            raise wire.ConnectionClosed(f"ttrpc: {exc}") from None
        finally:
            self._pending.pop(stream_id, None)
        if response.status.code != wire.Code.OK:
            raise wire.TtrpcError(_code(response.status.code), response.status.message)
        return response_type.FromString(response.payload)

    async def _read_loop(self) -> None:
        reason = "ttrpc: closed"
        try:
            while True:
                frame = await wire.read_frame(self._stream)
                answer = self._pending.get(frame.stream_id)
                if answer is None or answer.done():
                    continue  # an answer nobody waits for any more (its deadline passed)
                if frame.oversized:
                    answer.set_exception(wire.TtrpcError(
                        wire.Code.RESOURCE_EXHAUSTED,
                        f"message length {frame.oversized} exceed maximum message size of {wire.MAX_DATA}"))
                elif frame.type == wire.TYPE_RESPONSE:
                    answer.set_result(wire.Response.FromString(frame.data))
        except asyncio.IncompleteReadError:
            pass
        except (ConnectionError, OSError) as exc:
            reason = f"ttrpc: {exc}"
        except Exception as exc:  # a response that does not parse: the stream cannot be trusted any more
            log.warning("ttrpc client: bad frame from the server: %s", exc)
            reason = f"ttrpc: protocol error: {exc}"
        self._shut(reason)

    def _shut(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(wire.ConnectionClosed(reason))
        self._stream.close()
        if self._on_close is not None:
            self._on_close()

    async def close(self) -> None:
        self._shut("ttrpc: client closed")
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


def _code(value: int) -> wire.Code:
    try:
        return wire.Code(value)
    except ValueError:
        return wire.Code.UNKNOWN
