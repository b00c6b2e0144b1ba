"""The port-forward protocol (`portforward.k8s.io`) on a multiplexed connection, as the kubelet serves it.

Each forwarded connection is a pair of streams the client opens, with headers `streamType` (`data` or `error`),
`port` and `requestID` (the pair's key; old clients without it are paired by stream id, as the kubelet does). A
stream with a missing or bad header is refused. Once both arrived, crisp dials localhost:<port> inside the pod and
relays the data stream both ways, half-closes included: the client's FIN shuts the pod connection's write side,
the pod's EOF ends the data stream. A failure is written as text on the error stream. Both streams are ended when
the relay is over. A pair whose second stream does not come within the stream creation timeout is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from cri.streaming.backend import Dialer
from cri.streaming.channels import Channel, ChannelClosed, StreamConnection
from cri.streaming.spdy.frames import Headers
from runtime import errors

log = logging.getLogger(__name__)

PROTOCOL = "portforward.k8s.io"
PROTOCOLS = (PROTOCOL,)
DATA, ERROR = "data", "error"
READ_SIZE = 64 * 1024
# after the pod ended its side, how long the client's side may still go on before the connection is closed
# (containerd waits one second too; a client that half-closes after reading the pod's EOF gets it)
PEER_GRACE = 1.0


def check_stream_headers(headers: Headers, ports: tuple[int, ...]) -> str | None:
    """Why a new stream is refused (None: accepted): it must name a valid port and a stream type."""
    port_text = (headers.get("port") or [""])[0]
    if not port_text:
        return '"port" header is required'
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return f"unable to parse {port_text!r} as a port"
    if ports and int(port_text) not in ports:
        return f"port {port_text} was not requested (requested: {', '.join(map(str, ports))})"
    kind = (headers.get("streamtype") or [""])[0]
    if not kind:
        return '"streamType" header is required'
    if kind not in (DATA, ERROR):
        return f"invalid stream type {kind!r}"
    return None


@dataclass
class _Pair:
    request_id: str
    data: Channel | None = None
    error: Channel | None = None
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class PortForward:
    """Every forwarded connection of one port-forward session."""

    def __init__(self, conn: StreamConnection, dialer: Dialer, sandbox_id: str, creation_timeout: float,
                 name: str) -> None:
        self.conn = conn
        self.dialer = dialer
        self.sandbox_id = sandbox_id
        self.creation_timeout = creation_timeout
        self.name = name
        self._pairs: dict[str, _Pair] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        try:
            while (channel := await self.conn.accept()) is not None:
                self._add(channel)
        finally:
            for pair in self._pairs.values():
                if pair.timer is not None:
                    pair.timer.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _request_id(self, channel: Channel, kind: str) -> str:
        request_id = channel.header("requestid")
        if request_id:
            return request_id
        # an old client without request ids: the data stream is opened right after its error stream
        stream_id = int(getattr(channel, "id", 0))
        return str(stream_id if kind == ERROR else stream_id - 2)

    def _add(self, channel: Channel) -> None:
        kind = channel.header("streamtype")
        request_id = self._request_id(channel, kind)
        pair = self._pairs.get(request_id)
        if pair is None:
            pair = self._pairs[request_id] = _Pair(request_id)
            pair.timer = asyncio.get_running_loop().call_later(self.creation_timeout, self._incomplete, pair)
        if getattr(pair, kind) is not None:
            log.warning("streaming %s: request %s has two %s streams", self.name, request_id, kind)
            self._spawn(self._refuse(channel, f"error processing stream for request {request_id}: "
                                              f"{kind} stream already assigned"))
            return
        setattr(pair, kind, channel)
        if pair.error is not None:
            pair.error.discard_input()  # the client never writes on it
        if pair.data is not None and pair.error is not None:
            if pair.timer is not None:
                pair.timer.cancel()
            del self._pairs[request_id]
            self._spawn(self._forward(pair.data, pair.error, request_id))

    def _incomplete(self, pair: _Pair) -> None:
        if self._pairs.get(pair.request_id) is not pair:
            return
        del self._pairs[pair.request_id]
        log.warning("streaming %s: request %s: timed out waiting for its streams", self.name, pair.request_id)
        for channel in (pair.data, pair.error):
            if channel is not None:
                self._spawn(self._refuse(channel, f"request {pair.request_id}: timed out waiting for streams"))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refuse(self, channel: Channel, message: str) -> None:
        with contextlib.suppress(ChannelClosed):
            if channel.header("streamtype") == ERROR:
                await channel.write(message.encode())
        await channel.close()
        channel.reset()

    async def _forward(self, data: Channel, error: Channel, request_id: str) -> None:
        port = int(data.header("port"))
        sock: socket.socket | None = None
        try:
            try:
                sock = await self.dialer.dial(port)
            except (errors.CrispError, OSError) as exc:
                message = (f"error forwarding port {port} to pod {self.sandbox_id}, uid : "
                           f"{getattr(exc, 'strerror', None) or exc}")
                log.info("streaming %s: %s", self.name, message)
                with contextlib.suppress(ChannelClosed):
                    await error.write(message.encode())
                return
            log.debug("streaming %s: request %s connected to port %d", self.name, request_id, port)
            await self._relay(sock, data)
        finally:
            if sock is not None:
                sock.close()
            await data.close()
            await error.close()

    async def _relay(self, sock: socket.socket, data: Channel) -> None:
        loop = asyncio.get_running_loop()

        async def to_pod() -> None:
            while (chunk := await data.read()) is not None:
                await loop.sock_sendall(sock, chunk)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

        async def to_client() -> None:
            while chunk := await loop.sock_recv(sock, READ_SIZE):
                await data.write(chunk)
            await data.close()

        upstream = asyncio.create_task(to_pod())
        downstream = asyncio.create_task(to_client())
        try:
            done, _ = await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
            if downstream in done and downstream.exception() is None:
                # the pod is done talking: the client's side gets a moment to finish, as with containerd
                await asyncio.wait({upstream}, timeout=PEER_GRACE)
            elif upstream in done and upstream.exception() is None:
                await downstream   # the client half-closed: the pod answers and ends
        except (OSError, ChannelClosed) as exc:
            log.debug("streaming %s: relay ended: %s", self.name, exc)
        finally:
            for task in (upstream, downstream):
                task.cancel()
            await asyncio.gather(upstream, downstream, return_exceptions=True)
