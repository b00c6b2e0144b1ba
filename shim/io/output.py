"""The container's outputs: its stdout and stderr pipes (or its pty master, as stdout), read without blocking."""

from __future__ import annotations

import os
from collections.abc import Callable

from shim.loop import Loop, read_available

PIPE_SIZE = 1 << 20  # the container's stdout/stderr pipes: room to keep writing while the shim is busy
READ_SIZE = 1 << 17


def output_pipe() -> tuple[int, int]:
    """(read end, write end), close-on-exec, as large as the host allows."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        import fcntl
        fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size for an unprivileged user: the default size works, slower
    return r, w


class Output:
    """One output of the container; every chunk goes to `on_data(output, data)`."""

    def __init__(self, loop: Loop, fd: int, stream: bytes, stream_id: int,
                 on_data: Callable[[Output, bytes], None]) -> None:
        self.loop = loop
        self.fd = fd
        self.stream = stream
        self.stream_id = stream_id
        self.on_data = on_data
        self.open = True
        os.set_blocking(fd, False)
        loop.add_reader(fd, self.on_readable)

    def on_readable(self, limit: int = 16) -> None:
        # a few reads per wakeup, so one busy stream cannot starve the other or the control socket
        for _ in range(limit):
            data = read_available(self.fd, READ_SIZE)
            if data is None:
                return
            if not data:
                self.close()
                return
            self.on_data(self, data)

    def drain(self) -> None:
        """Everything already in the pipe (the container has exited)."""
        while self.open:
            data = read_available(self.fd, READ_SIZE)
            if not data:
                if data is not None:
                    self.close()
                return
            self.on_data(self, data)

    def close(self) -> None:
        if self.open:
            self.open = False
            self.loop.forget(self.fd)
            os.close(self.fd)
