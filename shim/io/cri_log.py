"""The CRI log file, in the format the kubelet's log reader parses.

Each line is `<timestamp> <stream> <tag> <content>\n`: the timestamp is RFC 3339 with nanoseconds (UTC, `Z`),
the stream is `stdout` or `stderr`, the tag is `F` for the end of a line of output and `P` for a part of one. The
reader joins `P` parts onto the next line and adds the newline back after an `F`. A chunk read from the container
gets one timestamp; a line longer than `max_line` bytes becomes `P` parts of at most that size; an unterminated
tail of a chunk is written at once as a `P` part (it is never held back waiting for the rest of its line).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable

STDOUT = b"stdout"
STDERR = b"stderr"


def format_timestamp(ns: int) -> bytes:
    """RFC 3339 with nine fractional digits in UTC: 2026-01-02T03:04:05.000000006Z."""
    sec, frac = divmod(ns, 1_000_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z").encode()


def format_chunk(stream: bytes, chunk: bytes, timestamp: bytes, max_line: int) -> bytes:
    """The log lines for one chunk of output read from `stream`."""
    prefix_p = timestamp + b" " + stream + b" P "
    prefix_f = timestamp + b" " + stream + b" F "
    lines = chunk.split(b"\n")
    tail = lines.pop()  # after the last newline: a part of a line, or b""
    if len(chunk) <= max_line or max(map(len, lines), default=0) <= max_line:
        # the common case, done in C: no complete line needs splitting
        out = prefix_f + (b"\n" + prefix_f).join(lines) + b"\n" if lines else b""
        if tail:
            out += b"".join(_parts(prefix_p, tail, max_line))
        return out
    pieces: list[bytes] = []
    for line in lines:
        if len(line) > max_line:
            last = (len(line) - 1) // max_line * max_line  # where the last part (1..max_line bytes) starts
            pieces.extend(_parts(prefix_p, line[:last], max_line))
            line = line[last:]
        pieces.append(prefix_f + line + b"\n")
    if tail:
        pieces.extend(_parts(prefix_p, tail, max_line))
    return b"".join(pieces)


def _parts(prefix_p: bytes, data: bytes, max_line: int) -> list[bytes]:
    """data as P parts of at most max_line bytes."""
    return [prefix_p + data[i:i + max_line] + b"\n" for i in range(0, len(data), max_line)]


class CriLog:
    """Appends container output to the CRI log file; `reopen` follows the kubelet's rename-based rotation.

    Without a path the output is discarded. A failing write is remembered and reported once: the shim keeps
    draining the container rather than blocking it.
    """

    def __init__(self, path: str, max_line: int, warn: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.max_line = max_line
        self._fd = -1
        self._warn = warn or (lambda message: None)
        self._failed = False
        self.bytes_written = 0
        if path:
            self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    @property
    def fd(self) -> int:
        """The open log file, -1 without one."""
        return self._fd

    def reopen(self) -> None:
        """Close the current file and open the path again, creating it: the new file exists on return."""
        if not self.path:
            return
        old = self._fd
        self._fd = -1
        if old >= 0:
            os.close(old)
        self._open()
        self._failed = False

    def write(self, stream: bytes, chunk: bytes, now_ns: int | None = None) -> None:
        if self._fd < 0 or not chunk:
            return
        timestamp = format_timestamp(time.time_ns() if now_ns is None else now_ns)
        data = memoryview(format_chunk(stream, chunk, timestamp, self.max_line))
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as exc:
            if not self._failed:
                self._failed = True
                self._warn(f"cannot write the container log {self.path}: {os.strerror(exc.errno or errno.EIO)}; "
                           "output is dropped until the log is reopened")
            return
        self.bytes_written += len(chunk)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
