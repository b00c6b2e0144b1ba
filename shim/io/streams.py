"""Byte plumbing for the shim: client connections (JSON lines, then frames) and non-blocking sinks (stdin)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from typing import Any

from shim import protocol
from shim.loop import Loop

RECV_SIZE = 65536


class Sink:
    """A non-blocking fd we write to (a container's or an exec's stdin, a pty master), buffered in memory.

    `paused` tells producers to stop reading while the backlog is over `high`; `on_drained` says when to resume.
    """

    def __init__(self, loop: Loop, fd: int, high: int = 1 << 20, owns_fd: bool = True) -> None:
        self.loop = loop
        self.fd = fd
        self.high = high
        self.owns_fd = owns_fd
        self.buf = bytearray()
        self.closed = False
        self._close_when_empty = False
        self.on_drained: Callable[[], None] | None = None
        os.set_blocking(fd, False)

    @property
    def paused(self) -> bool:
        return len(self.buf) > self.high

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self.buf += data
        self._flush()

    def close(self) -> None:
        """Close once everything written so far has gone out."""
        self._close_when_empty = True
        self._flush()

    def _flush(self) -> None:
        if self.closed:
            return
        while self.buf:
            try:
                n = os.write(self.fd, self.buf)
            except BlockingIOError:
                self.loop.add_writer(self.fd, self._flush)
                return
            except OSError:  # the reader went away (EPIPE, EIO): nothing more can be delivered
                self.buf.clear()
                self._close_now()
                return
            del self.buf[:n]
        self.loop.remove_writer(self.fd)
        if self._close_when_empty:
            self._close_now()
        elif self.on_drained is not None:
            self.on_drained()

    def _close_now(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.forget(self.fd)
        if self.owns_fd:
            os.close(self.fd)
        if self.on_drained is not None:
            self.on_drained()


class Conn:
    """A client of the control socket: JSON lines until an attach/exec reply, then binary frames both ways."""

    def __init__(self, loop: Loop, sock: socket.socket, on_message: Callable[[Conn, dict[str, Any]], None],
                 on_close: Callable[[Conn], None]) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.framed = False
        self.closed = False
        self.pending: list[str] = []  # the ops received and not answered yet (a `wait` until the exit)
        self._close_after_flush = False
        self._paused = False
        self.on_message = on_message
        self.on_close = on_close
        # frame mode: called with (stream, payload)
        self.on_frame: Callable[[int, bytes], None] | None = None
        self.on_flushed: Callable[[], None] | None = None
        sock.setblocking(False)
        loop.add_reader(self.fd, self._on_readable)

    # --- reading --------------------------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    def pause_reading(self) -> None:
        if not self._paused and not self.closed:
            self._paused = True
            self.loop.remove_reader(self.fd)

    def resume_reading(self) -> None:
        if self._paused and not self.closed:
            self._paused = False
            self.loop.add_reader(self.fd, self._on_readable)
            if self.rbuf:
                self._process()

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.rbuf += data
        if len(self.rbuf) > protocol.MAX_FRAME + RECV_SIZE and not self.framed:
            self.send_json(protocol.reply_error("InvalidArgument", "request line too long"))
            self.close()
            return
        self._process()

    def _process(self) -> None:
        while not self.closed and not self._paused:
            if self.framed:
                header = protocol.FRAME_HEADER.size
                if len(self.rbuf) < header:
                    return
                stream, length = protocol.FRAME_HEADER.unpack_from(self.rbuf)
                if length > protocol.MAX_FRAME:
                    self.close()
                    return
                if len(self.rbuf) < header + length:
                    return
                payload = bytes(self.rbuf[header:header + length])
                del self.rbuf[:header + length]
                if self.on_frame is not None:
                    self.on_frame(stream, payload)
            else:
                end = self.rbuf.find(b"\n")
                if end < 0:
                    return
                line = bytes(self.rbuf[:end])
                del self.rbuf[:end + 1]
                try:
                    message = json.loads(line)
                    if not isinstance(message, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    self.send_json(protocol.reply_error("InvalidArgument", f"bad request: {exc}"))
                    continue
                self.on_message(self, message)

    # --- writing --------------------------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        return len(self.wbuf)

    def send_json(self, message: dict[str, Any]) -> None:
        self.send(protocol.encode(message))

    def send_frame(self, stream: int, payload: bytes) -> None:
        # big chunks are cut so the reader's frame limit holds
        for start in range(0, max(len(payload), 1), protocol.MAX_FRAME):
            self.send(protocol.frame(stream, payload[start:start + protocol.MAX_FRAME]))

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        self.wbuf += data
        self._flush()

    def _flush(self) -> None:
        if self.closed:
            return
        while self.wbuf:
            try:
                n = self.sock.send(self.wbuf)
            except BlockingIOError:
                self.loop.add_writer(self.fd, self._flush)
                return
            except OSError:
                self.close()
                return
            del self.wbuf[:n]
        self.loop.remove_writer(self.fd)
        if self._close_after_flush:
            self.close()
        elif self.on_flushed is not None:
            self.on_flushed()

    def close_after_flush(self) -> None:
        self._close_after_flush = True
        self._flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.forget(self.fd)
        self.sock.close()
        self.on_close(self)
