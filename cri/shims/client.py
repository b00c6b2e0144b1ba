"""crispd's typed asyncio client for one shim's control socket.

Every call opens its own connection (a unix connect is cheap, and a long `wait` or a stream then never holds up a
short call), has a timeout, and turns the shim's typed errors back into `runtime.errors` kinds: a shim that does not
answer is Unavailable, a call that takes too long DeadlineExceeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from runtime import errors
from shim import protocol
from shim.protocol import ExitStatus

DEFAULT_TIMEOUT = 30.0
# sun_path holds 108 bytes; longer socket paths are reached through /proc/self/fd/<dir fd>/<name>
_SUN_PATH_MAX = 107


class ShimInternalError(errors.CrispError):
    """The shim failed in a way that is nobody's fault but crisp's (INTERNAL)."""


def shim_error(problem: object, default: str) -> Exception:
    """A shim's `{"kind", "message"}` as the error it names; a kind crisp does not know is ShimInternalError."""
    fields = problem if isinstance(problem, dict) else {}
    return errors.from_kind(fields.get("kind", errors.INTERNAL), str(fields.get("message", default)),
                            fallback=ShimInternalError)


@dataclass(frozen=True)
class ShimState:
    id: str
    state: str              # created | running | stopped
    pid: int                # the container's init
    started_at: int         # ns, 0 = not started
    shim_pid: int
    status: ExitStatus | None


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    truncated: bool = False


async def open_unix(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if len(path.encode()) <= _SUN_PATH_MAX:
        return await asyncio.open_unix_connection(path, limit=protocol.MAX_FRAME * 2)
    dir_fd = os.open(os.path.dirname(path), os.O_PATH | os.O_CLOEXEC)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, f"/proc/self/fd/{dir_fd}/{os.path.basename(path)}")
        except BaseException:
            sock.close()
            raise
    finally:
        os.close(dir_fd)
    return await asyncio.open_unix_connection(sock=sock, limit=protocol.MAX_FRAME * 2)


class ShimStream:
    """An attach or exec session: frames from the shim, stdin and resizes to it, and how it ended."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]) -> None:
        self._reader = reader
        self._writer = writer
        self.info = info
        self.exit: dict[str, Any] | None = None

    async def read(self) -> tuple[int, bytes] | None:
        """The next (stream, data) with stream STREAM_STDOUT or STREAM_STDERR; None once the session ended
        (then `exit` holds the exit frame, if the shim sent one)."""
        while True:
            try:
                header = await self._reader.readexactly(protocol.FRAME_HEADER.size)
                stream, length = protocol.FRAME_HEADER.unpack(header)
                payload = await self._reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            if stream == protocol.STREAM_EXIT:
                self.exit = json.loads(payload)
                return None
            if stream == protocol.STREAM_ERROR:
                raise shim_error(json.loads(payload), "")
            return stream, payload

    async def _send(self, stream: int, payload: bytes) -> None:
        self._writer.write(protocol.frame(stream, payload))
        await self._writer.drain()

    async def write_stdin(self, data: bytes) -> None:
        for start in range(0, len(data), protocol.MAX_FRAME):
            await self._send(protocol.STREAM_STDIN, data[start:start + protocol.MAX_FRAME])

    async def close_stdin(self) -> None:
        await self._send(protocol.STREAM_STDIN, b"")

    async def resize(self, width: int, height: int) -> None:
        await self._send(protocol.STREAM_RESIZE, json.dumps({"width": width, "height": height}).encode())

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


class ShimClient:
    """The control socket of the shim of one container."""

    def __init__(self, container_id: str, socket_path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.id = container_id
        self.socket_path = socket_path
        self.timeout = timeout

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await open_unix(self.socket_path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise errors.Unavailable(f"the shim of container {self.id} is not listening on {self.socket_path}: "
                                     f"{exc.strerror}") from None
        except OSError as exc:
            raise errors.Unavailable(f"cannot reach the shim of container {self.id}: {exc}") from None

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, op: str,
                        fields: dict[str, Any], sent: asyncio.Event | None = None) -> dict[str, Any]:
        """Send one request and read its reply; `sent` is set once the request is on its way."""
        writer.write(protocol.encode(protocol.request(op, **fields)))
        await writer.drain()
        if sent is not None:
            sent.set()
        return self._reply(await reader.readline(), op)

    def _reply(self, line: bytes, op: str) -> dict[str, Any]:
        if not line:
            raise errors.Unavailable(f"the shim of container {self.id} closed the connection during {op}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise shim_error(reply.get("error"), f"{op} failed")
        return dict(reply)

    @contextlib.asynccontextmanager
    async def _session(self, op: str, call_timeout: float | None
                       ) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """A connection of its own for one request and its replies, closed afterwards. The time limit (None: the
        client's default; 0: none) covers connecting too: DeadlineExceeded; a broken connection is Unavailable."""
        limit = self.timeout if call_timeout is None else call_timeout
        try:
            async with asyncio.timeout(limit or None):
                reader, writer = await self._connect()
                try:
                    yield reader, writer
                finally:
                    writer.close()
                    with contextlib.suppress(ConnectionError):
                        await writer.wait_closed()
        except TimeoutError:
            raise errors.DeadlineExceeded(f"the shim of container {self.id} did not answer {op} within "
                                          f"{limit}s") from None
        except (ConnectionError, ValueError) as exc:
            raise errors.Unavailable(f"the shim of container {self.id} failed during {op}: {exc}") from None

    async def call(self, op: str, call_timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """One request and its reply. timeout None: the client's default; 0: no timeout (for `wait`)."""
        async with self._session(op, call_timeout) as (reader, writer):
            return await self._exchange(reader, writer, op, fields)

    # --- the operations -------------------------------------------------------------------------------------

    async def create(self, call_timeout: float | None = None,
                     held: Callable[[int], Awaitable[None]] | None = None) -> int:
        """Create the container through the executor; returns its init pid. On failure the shim exits.

        `held` (the systemd cgroup driver): the shim first reports the executor's pid, before the executor does
        anything; `held(pid)` puts it where the container's cgroup is to be (the executor waits for that). If
        `held` fails it must kill the executor (the shim then undoes the create): its error is raised."""
        if held is None:
            return int((await self.call("create", call_timeout))["pid"])
        async with self._session("create", call_timeout) as (reader, writer):
            first = await self._exchange(reader, writer, "create", {"hold": True})
            try:
                await held(int(first["held"]))
            except BaseException:
                with contextlib.suppress(Exception):  # the shim's word on the killed executor
                    await asyncio.wait_for(reader.readline(), 10)
                raise
            return int(self._reply(await reader.readline(), "create")["pid"])

    async def start(self, call_timeout: float | None = None) -> int:
        """Start the created container; returns its start time (ns)."""
        return int((await self.call("start", call_timeout))["started_at"])

    async def state(self, call_timeout: float | None = None) -> ShimState:
        reply = await self.call("state", call_timeout)
        status = reply.get("status")
        return ShimState(id=reply["id"], state=reply["state"], pid=reply["pid"], started_at=reply["started_at"],
                         shim_pid=reply["shim_pid"], status=ExitStatus.from_json(status) if status else None)

    async def kill(self, signal: int, all: bool = False, call_timeout: float | None = None) -> None:
        """Signal the init (all=False) or every process of the container (all=True)."""
        await self.call("kill", call_timeout, signal=int(signal), all=all)

    async def wait(self, call_timeout: float | None = 0, sent: asyncio.Event | None = None) -> ExitStatus:
        """The exit status, once the container has exited (no timeout unless one is given); `sent` is set once
        the shim has the request."""
        async with self._session("wait", call_timeout) as (reader, writer):
            return ExitStatus.from_json((await self._exchange(reader, writer, "wait", {}, sent))["status"])

    async def update(self, resources: dict[str, Any], call_timeout: float | None = None) -> None:
        """New limits (an OCI linux.resources without devices), applied by the executor's `update`."""
        await self.call("update", call_timeout, resources=resources)

    async def reopen_log(self, call_timeout: float | None = None) -> None:
        await self.call("reopen_log", call_timeout)

    async def resize(self, width: int, height: int, exec_id: str = "", call_timeout: float | None = None) -> None:
        await self.call("resize", call_timeout, width=width, height=height, exec_id=exec_id)

    async def shutdown(self, force: bool = False, call_timeout: float | None = None) -> None:
        """The status is collected (or the container is to go): delete it, unmount its rootfs, end the shim.
        force kills a container that still runs."""
        await self.call("shutdown", call_timeout, force=force)

    async def debug(self, call_timeout: float | None = None) -> dict[str, Any]:
        return await self.call("debug", call_timeout)

    async def _open_stream(self, op: str, call_timeout: float | None, fields: dict[str, Any]) -> ShimStream:
        limit = self.timeout if call_timeout is None else call_timeout
        reader, writer = await self._connect()
        try:
            reply = await asyncio.wait_for(self._exchange(reader, writer, op, fields), limit or None)
        except TimeoutError:
            writer.close()
            raise errors.DeadlineExceeded(f"the shim of container {self.id} did not answer {op} within "
                                          f"{limit}s") from None
        except BaseException:
            writer.close()
            raise
        return ShimStream(reader, writer, reply)

    async def attach(self, stdin: bool = False, stdout: bool = True, stderr: bool = True,
                     call_timeout: float | None = None) -> ShimStream:
        """Stream the container's output (and feed its stdin); ends with an exit frame when it exits."""
        return await self._open_stream("attach", call_timeout, {"stdin": stdin, "stdout": stdout, "stderr": stderr})

    async def exec(self, args: Sequence[str], tty: bool = False, stdin: bool = False, env: Sequence[str] = (),
                   exec_timeout: float = 0, width: int = 0, height: int = 0,
                   call_timeout: float | None = None) -> ShimStream:
        """Run a process in the container with its identity; the stream ends with the exec's exit frame
        (`exit_code`, `timed_out`). exec_timeout > 0 kills its processes after that many seconds."""
        return await self._open_stream("exec", call_timeout, {
            "args": list(args), "tty": tty, "stdin": stdin, "env": list(env), "timeout": exec_timeout,
            "width": width, "height": height})

    async def exec_sync(self, args: Sequence[str], exec_timeout: float = 0, env: Sequence[str] = (),
                        max_output: int = protocol.MAX_EXEC_SYNC_OUTPUT) -> ExecResult:
        """ExecSync: run args, collect stdout and stderr (together cut at max_output), return the exit code.
        On timeout the exec's processes are killed and `timed_out` is set."""
        stream = await self.exec(args, env=env, exec_timeout=exec_timeout)
        out, err = bytearray(), bytearray()
        truncated = False
        try:
            while (item := await stream.read()) is not None:
                which, data = item
                room = max_output - len(out) - len(err)
                if len(data) > room:
                    data = data[:room]
                    truncated = True
                (out if which == protocol.STREAM_STDOUT else err).extend(data)
        finally:
            await stream.close()
        if stream.exit is None:
            raise errors.Unavailable(f"the shim of container {self.id} ended exec {args[0]!r} without an exit code")
        return ExecResult(exit_code=int(stream.exit["exit_code"]), stdout=bytes(out), stderr=bytes(err),
                          timed_out=bool(stream.exit.get("timed_out")), truncated=truncated)
