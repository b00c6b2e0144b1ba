"""One NRI plugin connection: the multiplexed socket, crisp's ttrpc client of the plugin's service (mux connection
1) and crisp's runtime service for the plugin (connection 2: RegisterPlugin, UpdateContainers).

Lifecycle (NRI's): the plugin registers (name, index) within the registration timeout; crisp configures it
(ConfigureRequest: its drop-in config, runtime name and version, timeouts) and learns the events it subscribes to;
the adaptation synchronizes it; then it gets the events it asked for. Every request has the request timeout. A
plugin whose connection breaks, or which lets a request run past its timeout, is closed and dropped: the event goes
on without it (no pod suffers for a plugin). An error the plugin answers with is its verdict and fails the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from runtime import aioproc, errors
from runtime.nri import api
from runtime.ttrpc import wire
from runtime.ttrpc.client import Client
from runtime.ttrpc.mux import Mux
from runtime.ttrpc.server import Server, unary

log = logging.getLogger(__name__)

PLUGIN_CONN, RUNTIME_CONN = 1, 2
UpdateFn = Callable[[list[Any]], Awaitable[list[Any]]]  # container updates -> the ones that failed
# what a synchronize message may carry, leaving room for the ttrpc envelope around it
SYNC_MESSAGE_LIMIT = wire.MAX_DATA - 64 * 1024


class PluginError(errors.CrispError):
    """The plugin answered a request with an error: the request fails with it."""


@dataclass(frozen=True)
class Timeouts:
    registration: float = 5.0
    request: float = 2.0
    # a plugin's synchronization handles the whole node at once: it gets longer than one event (critest holds one
    # for 2 s and expects the plugin to join); creations wait for it meanwhile
    synchronization: float = 5.0


def check_name(name: str) -> None:
    if not name or any(not (c.isascii() and (c.isalnum() or c in "-_.+")) for c in name):
        raise errors.InvalidArgument(f"invalid plugin name {name!r}: [a-zA-Z0-9_.+-]+ expected")


def check_index(idx: str) -> None:
    if len(idx) != 2 or not idx.isdigit() or not idx.isascii():
        raise errors.InvalidArgument(f"invalid plugin index {idx!r}: two digits expected")


def _peer_pid(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return 0
    with contextlib.suppress(OSError):
        pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return int(pid)
    return 0


class Plugin:
    """`idx`/`name` are known up front for a plugin crisp launched (`process`), else learnt at registration."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_update: UpdateFn,
                 name: str = "", idx: str = "", config: str = "", process: aioproc.Process | None = None) -> None:
        self.name, self.idx, self.config = name, idx, config
        self.process = process
        self.pid = process.pid if process is not None else _peer_pid(writer)
        self.events = 0
        self.nri_version = ""
        self._on_update = on_update
        self._registered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed = asyncio.Event()
        self.mux = Mux(reader, writer, on_close=self._lost)
        self.client = Client(self.mux.open(PLUGIN_CONN))
        self._server = Server({api.RUNTIME_SERVICE: {
            "RegisterPlugin": unary(api.RegisterPluginRequest, self._register),
            "UpdateContainers": unary(api.UpdateContainersRequest, self._update_containers),
        }})
        self._serving: asyncio.Task[None] | None = None

    @property
    def full_name(self) -> str:
        return f"{self.idx or '??'}-{self.name or 'plugin'}"

    @property
    def kind(self) -> str:
        return "pre-connected" if self.process is not None else "external"

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def subscribed(self, event: int) -> bool:
        return api.mask_has(self.events, event)

    # ------------------------------------------------------------------ the runtime service (plugin -> crisp)

    async def _register(self, request: Any) -> Any:
        if self.process is None:  # an external plugin names itself; a launched one was named by its file
            try:
                check_name(request.plugin_name)
                check_index(request.plugin_idx)
            except errors.InvalidArgument as exc:
                if not self._registered.done():
                    self._registered.set_exception(exc)
                raise
            self.name, self.idx = request.plugin_name, request.plugin_idx
        self.nri_version = request.NRI_version or "unknown"
        log.info("NRI plugin %s registered (pid %d, NRI %s)", self.full_name, self.pid, self.nri_version)
        if not self._registered.done():
            self._registered.set_result(None)
        return api.Empty()

    async def _update_containers(self, request: Any) -> Any:
        log.info("NRI plugin %s asks to update %d container(s)", self.full_name, len(request.update))
        if request.evict:
            raise errors.Unimplemented("container eviction is not supported")
        failed = await self._on_update(list(request.update))
        return api.UpdateContainersResponse(failed=failed)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, runtime_name: str, runtime_version: str, timeouts: Timeouts) -> None:
        """Wait for the registration, then configure; the plugin is closed when either fails."""
        self.mux.start()
        self.client.start()
        self._serving = asyncio.get_running_loop().create_task(self._server.serve(self.mux.open(RUNTIME_CONN)))
        try:
            try:
                async with asyncio.timeout(timeouts.registration):
                    closed: asyncio.Future[Any] = asyncio.ensure_future(self._closed.wait())
                    registered: asyncio.Future[Any] = self._registered
                    done, _ = await asyncio.wait({registered, closed}, return_when=asyncio.FIRST_COMPLETED)
                    closed.cancel()
                    if registered not in done:
                        raise errors.Unavailable(f"NRI plugin {self.full_name}: connection closed before it "
                                                 "registered")
                    registered.result()
            except TimeoutError:
                raise errors.DeadlineExceeded(f"NRI plugin {self.full_name}: did not register within "
                                              f"{timeouts.registration}s") from None
            request = api.ConfigureRequest(
                config=self.config, runtime_name=runtime_name, runtime_version=runtime_version,
                registration_timeout=int(timeouts.registration * 1000), request_timeout=int(timeouts.request * 1000),
                NRI_version=api.NRI_VERSION)
            reply = await self.client.call(api.PLUGIN_SERVICE, "Configure", request, api.ConfigureResponse,
                                           timeouts.request)
            events = reply.events or api.VALID_EVENTS
            if events & ~api.VALID_EVENTS:
                raise errors.InvalidArgument(f"NRI plugin {self.full_name}: invalid events 0x{events:x}")
            self.events = events
        except BaseException:
            await self.close()
            raise

    async def synchronize(self, pods: list[Any], containers: list[Any], time_limit: float) -> list[Any]:
        """Send every pod and container, in as many messages as the size limit needs (`more` set on all but the
        last, which the plugin must echo); returns the updates it asks for."""
        chunks = _sync_chunks(pods, containers)
        reply = None
        for i, (chunk_pods, chunk_containers) in enumerate(chunks):
            more = i < len(chunks) - 1
            request = api.SynchronizeRequest(pods=chunk_pods, containers=chunk_containers, more=more)
            reply = await self.client.call(api.PLUGIN_SERVICE, "Synchronize", request, api.SynchronizeResponse,
                                           time_limit)
            if more and (reply.update or not reply.more):
                raise errors.FailedPrecondition(f"NRI plugin {self.full_name} does not handle split sync requests")
        return list(reply.update) if reply is not None else []

    async def call(self, method: str, request: Any, response_type: Any, time_limit: float) -> Any | None:
        """The plugin's answer; None when the plugin is gone (it broke its connection or timed out, and is closed
        now); PluginError when it answered with an error."""
        if self.closed:
            return None
        try:
            return await self.client.call(api.PLUGIN_SERVICE, method, request, response_type, time_limit)
        except wire.TtrpcError as exc:
            if isinstance(exc, wire.ConnectionClosed) or exc.code == wire.Code.DEADLINE_EXCEEDED:
                log.error("NRI plugin %s dropped: %s failed: %s", self.full_name, method, exc)
                await self.close()
                return None
            raise PluginError(f"NRI plugin {self.full_name}: {method}: {exc.detail or exc}") from None

    def _lost(self, reason: str) -> None:
        if not self._closed.is_set():
            log.info("NRI plugin %s: connection closed (%s)", self.full_name, reason)
        self._closed.set()

    async def close(self) -> None:
        """Close the connection and stop a launched plugin's process; idempotent."""
        self._closed.set()
        self.mux.close()
        await self.client.close()
        if self._serving is not None and self._serving is not asyncio.current_task():
            self._serving.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._serving
        if self.process is not None:
            self.process.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.process.wait(), 5)
        await self.mux.wait_closed()


def _sync_chunks(pods: list[Any], containers: list[Any]) -> list[tuple[list[Any], list[Any]]]:
    """Pods and containers in runs whose encoded size stays under the limit (always at least one run)."""
    chunks: list[tuple[list[Any], list[Any]]] = [([], [])]
    size = 0
    for kind, items in ((0, pods), (1, containers)):
        for item in items:
            item_size = item.ByteSize() + 8  # tag and length prefix
            if size + item_size > SYNC_MESSAGE_LIMIT and (chunks[-1][0] or chunks[-1][1]):
                chunks.append(([], []))
                size = 0
            chunks[-1][kind].append(item)
            size += item_size
    return chunks
