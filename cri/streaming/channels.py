"""What the streaming protocols (remote command, port-forward) need from a multiplexed connection.

SPDY/3.1 (cri/streaming/spdy) provides it today; WebSocket channels (v5.channel.k8s.io) are to provide the same
interface, so that remotecommand.py and portforward.py do not change when they come.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class ChannelClosed(Exception):
    """The channel (or its whole connection) is gone: nothing more can be written to it."""


class Channel(Protocol):
    """One stream the client opened: bytes both ways, each direction ended on its own."""

    @property
    def headers(self) -> Mapping[str, list[str]]:
        """The headers it was opened with; names are lower-case."""
        ...

    def header(self, name: str) -> str:
        """The first value of a header ('' when it is absent)."""
        ...

    async def read(self) -> bytes | None:
        """The next bytes from the client; None once the client has ended its direction (or reset the stream,
        or the connection ended)."""
        ...

    async def write(self, data: bytes) -> None:
        """Send bytes; returns once the connection has room for more (backpressure). ChannelClosed if the
        stream or the connection is gone."""
        ...

    async def close(self) -> None:
        """End our direction (the client reads EOF). Idempotent; never raises."""
        ...

    def reset(self) -> None:
        """Abort both directions."""
        ...

    def discard_input(self) -> None:
        """Nobody will read this channel: what the client sends on it is dropped instead of buffered."""
        ...


class StreamConnection(Protocol):
    """An upgraded connection carrying channels."""

    async def accept(self) -> Channel | None:
        """The next channel the client opens; None once the connection has ended."""
        ...

    @property
    def ended(self) -> bool:
        """The client went away (or the connection failed or timed out)."""
        ...

    async def wait_ended(self) -> None:
        ...

    async def close(self) -> None:
        """Say goodbye, let the client read what was sent, then close (idempotent)."""
        ...
