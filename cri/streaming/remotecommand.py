"""The remote command protocols (exec and attach) on a multiplexed connection, as the kubelet serves them.

The client opens one stream per channel, named by its `streamType` header: `error` always, `stdin`, `stdout`,
`stderr` as the request asked, and `resize` for a terminal (v3 and v4). Output goes out on stdout/stderr; the
client's stdin goes to the process and its end (FIN) closes the process's stdin; `resize` carries a JSON window
size (`{"Width": 80, "Height": 24}`) per change. When the process ends, the output streams are ended and the
outcome is written on the error stream: in v4 a Kubernetes `Status` (Success; Failure with reason
NonZeroExitCode and the exit code as a cause; Failure with reason InternalError), in v1-v3 only a failure's
message. Then the connection is closed.

A client that goes away ends the session: the shim then kills the exec's processes (tty or not). The kubelet with
containerd leaves such a process running until it ends by itself (containerd/cri#1256, kubernetes#89031);
crisp does not leave processes nobody can reach behind. An attach session only detaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cri.streaming.backend import ProcessStream
from cri.streaming.channels import Channel, ChannelClosed, StreamConnection
from runtime import errors
from shim import protocol as shim_protocol

log = logging.getLogger(__name__)

V4 = "v4.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V2 = "v2.channel.k8s.io"
V1 = "channel.k8s.io"
PROTOCOLS = (V4, V3, V2, V1)

ERROR, STDIN, STDOUT, STDERR, RESIZE = "error", "stdin", "stdout", "stderr", "resize"
# a tty exec waits this long for the client's first window size, so the process starts with the right one
INITIAL_SIZE_WAIT = 0.5
MAX_RESIZE_BUFFER = 4096


@dataclass(frozen=True)
class Options:
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


def success_status() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def exit_code_status(code: int, command: str) -> dict[str, Any]:
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: error executing command {command}, "
                       f"exit code {code}",
            "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def internal_error_status(message: str) -> dict[str, Any]:
    return {"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {message}",
            "reason": "InternalError", "details": {"causes": [{"message": message}]}, "code": 500}


class ResizeReader:
    """Window sizes from the resize channel: concatenated JSON objects."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._buffer = ""
        self._decoder = json.JSONDecoder()
        self._done = False

    async def next_size(self) -> tuple[int, int] | None:
        while not self._done:
            self._buffer = self._buffer.lstrip()
            if self._buffer:
                try:
                    value, end = self._decoder.raw_decode(self._buffer)
                except ValueError:
                    if len(self._buffer) > MAX_RESIZE_BUFFER:
                        log.warning("ignoring the rest of a resize stream that is not JSON")
                        self._done = True
                        self._channel.discard_input()
                        return None
                else:
                    self._buffer = self._buffer[end:]
                    size = _window_size(value)
                    if size is not None:
                        return size
                    continue
            data = await self._channel.read()
            if data is None:
                self._done = True
                return None
            self._buffer += data.decode(errors="replace")
        return None


def _window_size(value: object) -> tuple[int, int] | None:
    if not isinstance(value, dict):
        return None
    fields = {str(k).lower(): v for k, v in value.items()}  # Go's JSON field names match case-insensitively
    width, height = fields.get("width"), fields.get("height")
    if not isinstance(width, int) or not isinstance(height, int) or not (0 <= width < 65536) or \
            not (0 <= height < 65536):
        return None
    return width, height


class RemoteCommand:
    """One exec or attach session on an upgraded connection."""

    def __init__(self, conn: StreamConnection, protocol: str, options: Options, creation_timeout: float,
                 name: str) -> None:
        self.conn = conn
        self.protocol = protocol
        self.options = options
        self.creation_timeout = creation_timeout
        self.name = name
        self.channels: dict[str, Channel] = {}

    def expected_streams(self) -> set[str]:
        wanted = {ERROR}
        for kind, on in ((STDIN, self.options.stdin), (STDOUT, self.options.stdout),
                         (STDERR, self.options.stderr)):
            if on:
                wanted.add(kind)
        if self.options.tty and self.protocol in (V4, V3):
            wanted.add(RESIZE)
        return wanted

    async def collect_streams(self) -> bool:
        """Wait until the client has opened every stream the request implies; False if it did not in time."""
        wanted = self.expected_streams()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.creation_timeout
        while not wanted <= self.channels.keys():
            try:
                channel = await asyncio.wait_for(self.conn.accept(), max(deadline - loop.time(), 0))
            except TimeoutError:
                log.warning("streaming %s: the client opened %s of the streams %s within %ss", self.name,
                            sorted(self.channels), sorted(wanted), self.creation_timeout)
                return False
            if channel is None:
                log.info("streaming %s: the client left before opening its streams", self.name)
                return False
            kind = channel.header("streamtype")
            if kind not in (ERROR, STDIN, STDOUT, STDERR, RESIZE) or kind in self.channels:
                log.warning("streaming %s: ignoring an unexpected %r stream", self.name, kind)
                channel.discard_input()
                continue
            self.channels[kind] = channel
        for kind in (ERROR, STDOUT, STDERR):  # the client writes nothing on these
            if kind in self.channels:
                self.channels[kind].discard_input()
        if self.protocol == V1 and STDIN in self.channels:
            await self.channels[STDIN].close()  # what the first kubelets did: the server's side of stdin ends
        return True

    async def serve(self, start: Callable[[int, int], Awaitable[ProcessStream]], exec_command: str | None) -> None:
        """Collect the streams, start the process (start(width, height)), relay until it ends or the client
        leaves, report the outcome. exec_command: the command for messages, None for an attach."""
        if not await self.collect_streams():
            return
        resize = ResizeReader(self.channels[RESIZE]) if RESIZE in self.channels else None
        width = height = 0
        if resize is not None and exec_command is not None:
            with contextlib.suppress(TimeoutError):
                size = await asyncio.wait_for(resize.next_size(), INITIAL_SIZE_WAIT)
                if size is not None:
                    width, height = size
        try:
            process = await start(width, height)
        except errors.CrispError as exc:
            log.info("streaming %s: cannot start: %s", self.name, exc)
            await self.finish(internal_error_status(str(exc)))
            return
        try:
            status = await self._relay(process, resize)
        finally:
            await process.close()
        if status is None:
            log.info("streaming %s: the client went away", self.name)
            return
        if exec_command is not None and status.get("exit_code") is not None:
            code = int(status["exit_code"])
            outcome = success_status() if code == 0 else exit_code_status(code, exec_command)
        elif "error" in status:
            outcome = internal_error_status(status["error"])
        else:
            outcome = success_status()
        log.info("streaming %s: ended (%s)", self.name, outcome.get("reason") or outcome["status"])
        await self.finish(outcome)

    async def _relay(self, process: ProcessStream, resize: ResizeReader | None) -> dict[str, Any] | None:
        """Pump until the process ends: its exit status ({"exit_code": ...} or {"error": ...}), or None when the
        client went away first."""
        helpers: list[asyncio.Task[None]] = []
        if STDIN in self.channels:
            helpers.append(asyncio.create_task(self._pump_stdin(process, self.channels[STDIN])))
        if resize is not None:
            helpers.append(asyncio.create_task(self._pump_resize(process, resize)))
        output = asyncio.create_task(self._pump_output(process))
        gone = asyncio.create_task(self.conn.wait_ended())
        try:
            await asyncio.wait({output, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not output.done():
                return None
            try:
                output.result()
            except ChannelClosed:
                return None
            except errors.CrispError as exc:
                return {"error": str(exc)}
            if process.exit is None:
                return {"error": "the shim ended the session without an exit status (it fell too far behind "
                                 "the client, or the shim is gone)"}
            return dict(process.exit)
        finally:
            for task in (*helpers, output, gone):
                task.cancel()
            await asyncio.gather(*helpers, output, gone, return_exceptions=True)

    async def _pump_output(self, process: ProcessStream) -> None:
        stdout, stderr = self.channels.get(STDOUT), self.channels.get(STDERR)
        while (item := await process.read()) is not None:
            which, data = item
            channel = stderr if which == shim_protocol.STREAM_STDERR else stdout
            if channel is not None:
                await channel.write(data)

    async def _pump_stdin(self, process: ProcessStream, channel: Channel) -> None:
        with contextlib.suppress(errors.CrispError, ConnectionError):
            while (data := await channel.read()) is not None:
                await process.write_stdin(data)
            if not self.conn.ended:
                await process.close_stdin()

    async def _pump_resize(self, process: ProcessStream, resize: ResizeReader) -> None:
        with contextlib.suppress(errors.CrispError, ConnectionError):
            while (size := await resize.next_size()) is not None:
                await process.resize(*size)

    async def finish(self, outcome: dict[str, Any]) -> None:
        """End the output streams, then report the outcome on the error stream and end it."""
        for kind in (STDOUT, STDERR):
            if kind in self.channels:
                await self.channels[kind].close()
        error = self.channels.get(ERROR)
        if error is None:
            return
        with contextlib.suppress(ChannelClosed):
            if self.protocol == V4:
                await error.write(json.dumps(outcome, separators=(",", ":")).encode())
            elif outcome["status"] != "Success":
                await error.write(str(outcome["message"]).encode())
        await error.close()
