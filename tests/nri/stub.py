"""The plugin side of NRI for tests: connect (to the socket, or through the fd 3 crisp passes a launched plugin),
register, answer Configure and Synchronize (collecting split requests as NRI's Go stub does), serve the events with
the handlers given, and call the runtime's UpdateContainers."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from runtime.nri import api
from runtime.ttrpc.client import Client
from runtime.ttrpc.mux import Mux
from runtime.ttrpc.server import Handler, Server, unary

Handle = Callable[[Any], Awaitable[Any]]
_METHODS = {m.name: (m.input_type.name, m.output_type.name)
            for m in api.DESCRIPTOR.services_by_name["Plugin"].methods}


class Stub:
    def __init__(self, name: str, idx: str, events: int, handlers: dict[str, Handle] | None = None,
                 on_configure: Callable[[Any], None] | None = None) -> None:
        self.name, self.idx, self.events = name, idx, events
        self.handlers = handlers or {}
        self.on_configure = on_configure
        self.synced: tuple[list[Any], list[Any]] | None = None
        self.sync_messages: list[tuple[int, int, bool]] = []
        self._collected: tuple[list[Any], list[Any]] = ([], [])
        self.closed = asyncio.Event()
        self.mux: Mux | None = None
        self.runtime: Client | None = None
        self.serving: asyncio.Task[None] | None = None

    async def connect(self, socket_path: str | None = None) -> None:
        if socket_path is None:
            sock = socket.socket(fileno=int(os.environ["NRI_PLUGIN_SOCKET"]))
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        else:
            reader, writer = await asyncio.open_unix_connection(socket_path)
        self.mux = Mux(reader, writer, on_close=lambda reason: self.closed.set())
        services: dict[str, Handler] = {name: unary(api.message_class(req), self._dispatch(name, resp))
                                        for name, (req, resp) in _METHODS.items()}
        server = Server({api.PLUGIN_SERVICE: services})
        self.runtime = Client(self.mux.open(2))
        self.mux.start()
        self.runtime.start()
        self.serving = asyncio.get_running_loop().create_task(server.serve(self.mux.open(1)))
        await self.runtime.call(api.RUNTIME_SERVICE, "RegisterPlugin", api.RegisterPluginRequest(
            plugin_name=self.name, plugin_idx=self.idx, NRI_version="crisp-test"), api.Empty, 5)

    def _dispatch(self, method: str, response: str) -> Handle:
        response_type = api.message_class(response)

        async def handle(request: Any) -> Any:
            if method == "Configure":
                if self.on_configure is not None:
                    self.on_configure(request)
                return api.ConfigureResponse(events=self.events)
            if method == "Synchronize":
                self.sync_messages.append((len(request.pods), len(request.containers), request.more))
                self._collected[0].extend(request.pods)
                self._collected[1].extend(request.containers)
                if request.more:
                    return api.SynchronizeResponse(more=True)
                self.synced, self._collected = self._collected, ([], [])
            handler = self.handlers.get(method)
            answer = await handler(request) if handler is not None else None
            return answer if answer is not None else response_type()
        return handle

    async def update_containers(self, updates: list[Any]) -> list[Any]:
        assert self.runtime is not None
        reply = await self.runtime.call(api.RUNTIME_SERVICE, "UpdateContainers",
                                        api.UpdateContainersRequest(update=updates), api.UpdateContainersResponse, 5)
        return list(reply.failed)

    async def close(self) -> None:
        if self.runtime is not None:
            await self.runtime.close()
        if self.mux is not None:
            self.mux.close()
            await self.mux.wait_closed()
