"""The seam between the streaming protocols and the rest of crispd: running execs and attaches through the
container's shim, and dialling ports inside a pod. cri/streaming/containers.py implements it over crisp's stores."""

from __future__ import annotations

import socket
from typing import Any, Protocol

from cri.streaming.requests import AttachRequest, ExecRequest, PortForwardRequest


class ProcessStream(Protocol):
    """An exec or attach session with a shim (cri.shims.client.ShimStream)."""

    exit: dict[str, Any] | None

    async def read(self) -> tuple[int, bytes] | None:
        """(shim.protocol.STREAM_STDOUT or STREAM_STDERR, data); None when the process (container) has ended,
        with `exit` set, or when the shim dropped the session (`exit` None)."""
        ...

    async def write_stdin(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    async def resize(self, width: int, height: int) -> None: ...

    async def close(self) -> None:
        """End the session; the shim kills an exec whose session ends before it does."""
        ...


class Dialer(Protocol):
    """Connections to ports of one pod."""

    async def dial(self, port: int) -> socket.socket:
        """A connected, non-blocking TCP socket to localhost:port in the pod's network namespace."""
        ...

    async def close(self) -> None: ...


class Backend(Protocol):
    async def exec(self, request: ExecRequest, width: int, height: int) -> ProcessStream:
        """Start the exec (width/height: the initial terminal size of a tty exec, 0 if unknown)."""
        ...

    async def attach(self, request: AttachRequest) -> ProcessStream: ...

    async def dialer(self, request: PortForwardRequest) -> Dialer:
        """Checks that the pod can be reached; errors are crisp error kinds."""
        ...
