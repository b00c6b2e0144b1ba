"""Long-lived helper processes with asyncio pipes, started from a worker thread.

asyncio's own subprocess support starts the process in the event loop's thread; for a big caller like crispd that
copy of its page tables takes tens of milliseconds on a loaded machine, all of it the loop's time. `spawn` starts the
process in a worker thread instead and then hands its pipes to the loop; its exit is awaited through a pidfd, so no
thread waits on it and no child watcher is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import subprocess
from collections.abc import Sequence

STREAM_LIMIT = 4 * 1024 * 1024


class Process:
    """A child with a StreamWriter on its stdin and a StreamReader on its stdout (where asked for)."""

    def __init__(self, popen: subprocess.Popen[bytes], pidfd: int, stdin: asyncio.StreamWriter | None,
                 stdout: asyncio.StreamReader | None) -> None:
        self._popen = popen
        self._pidfd = pidfd
        self.stdin = stdin
        self.stdout = stdout

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """None while it runs (checked without blocking; reaps it once it has exited)."""
        if self._popen.returncode is None and self._pidfd >= 0 and _readable(self._pidfd):
            self._reap()
        return self._popen.returncode

    def kill(self) -> None:
        if self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._popen.pid, 9)

    async def wait(self) -> int:
        if self._popen.returncode is None and self._pidfd >= 0:
            loop = asyncio.get_running_loop()
            exited: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self._pidfd, lambda: None if exited.done() else exited.set_result(None))
            try:
                await exited
            finally:
                loop.remove_reader(self._pidfd)
            self._reap()
        return int(self._popen.returncode or 0)

    def _reap(self) -> None:
        self._popen.wait()  # it has exited: this returns at once
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


async def spawn(argv: Sequence[str], *, stdin: bool = True, stdout: bool = True, stderr: int | None = None,
                env: dict[str, str] | None = None, pass_fds: Sequence[int] = ()) -> Process:
    """Start argv from a worker thread; stdin/stdout as asyncio streams when asked for, stderr as given (None:
    inherited); `pass_fds` stay open in the child (at their numbers)."""

    def start() -> tuple[subprocess.Popen[bytes], int]:
        popen = subprocess.Popen(list(argv), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                 stdout=subprocess.PIPE if stdout else subprocess.DEVNULL, stderr=stderr,
                                 close_fds=True, env=env, pass_fds=tuple(pass_fds))
        return popen, os.pidfd_open(popen.pid)

    popen, pidfd = await asyncio.to_thread(start)
    loop = asyncio.get_running_loop()
    writer = reader = None
    if popen.stdout is not None:
        reader = asyncio.StreamReader(limit=STREAM_LIMIT)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), popen.stdout)
    if popen.stdin is not None:
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, popen.stdin)
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
    return Process(popen, pidfd, writer, reader)
