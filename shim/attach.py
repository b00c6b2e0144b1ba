"""Attach sessions to the container's init and window sizes: output fanned out to attachers, stdin from them.

An attacher more than MAX_ATTACH_BACKLOG behind is dropped (the container is never slowed by an attacher); with
`stdin_once`, the container's stdin closes when the first attach session that wrote to it ends.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from shim import protocol
from shim.console import resize_from_frame
from shim.io import pty
from shim.io.streams import Conn
from shim.log import log
from shim.protocol import ExitStatus, ShimError

if TYPE_CHECKING:
    from shim.server import Reply, Shim


class Attacher:
    def __init__(self, conn: Conn, stdin: bool, stdout: bool, stderr: bool) -> None:
        self.conn = conn
        self.stdin = stdin
        self.streams = {protocol.STREAM_STDOUT} if stdout else set()
        if stderr:
            self.streams.add(protocol.STREAM_STDERR)


class Attachments:
    def __init__(self, shim: Shim) -> None:
        self.shim = shim
        self.attachers: dict[Conn, Attacher] = {}

    def op_attach(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        container = self.shim.container
        if container.state not in ("created", "starting", "running"):
            raise ShimError("FailedPrecondition", f"container {container.id} is {container.state}: cannot attach")
        want_stdin = bool(message.get("stdin"))
        if want_stdin and (container.stdin is None or not self.shim.config.stdin):
            raise ShimError("FailedPrecondition", f"container {container.id} has no stdin to attach to")
        attacher = Attacher(conn, want_stdin, bool(message.get("stdout", True)), bool(message.get("stderr", True)))
        reply(protocol.reply_ok(tty=container.master >= 0))
        conn.framed = True
        self.attachers[conn] = attacher

        def on_frame(stream: int, payload: bytes) -> None:
            if stream == protocol.STREAM_STDIN and attacher.stdin:
                if not payload:
                    attacher.stdin = False
                    self._stdin_session_ended()
                elif container.stdin is not None:
                    container.stdin.write(payload)
                    if container.stdin.paused:
                        self._pause_stdin_sources()
            elif stream == protocol.STREAM_RESIZE:
                resize_from_frame(container.master, payload)

        conn.on_frame = on_frame

    def forward(self, stream_id: int, data: bytes) -> None:
        """A chunk of the container's output, to every attacher that asked for its stream."""
        for conn, attacher in list(self.attachers.items()):
            if stream_id in attacher.streams:
                conn.send_frame(stream_id, data)
                if conn.backlog > protocol.MAX_ATTACH_BACKLOG:
                    log(f"dropping an attach session that fell {conn.backlog} bytes behind")
                    conn.close()

    def container_exited(self, status: ExitStatus) -> None:
        """Every attacher gets the exit frame, then its connection closes."""
        for conn in list(self.attachers):
            conn.send_frame(protocol.STREAM_EXIT, json.dumps(status.to_json()).encode())
            conn.close_after_flush()
        self.attachers.clear()

    def conn_closed(self, conn: Conn) -> None:
        attacher = self.attachers.pop(conn, None)
        if attacher is not None and attacher.stdin:
            self._stdin_session_ended()

    def _pause_stdin_sources(self) -> None:
        sink = self.shim.container.stdin
        if sink is None:
            return
        paused = [c for c, a in self.attachers.items() if a.stdin]
        for conn in paused:
            conn.pause_reading()

        def drained() -> None:
            sink.on_drained = None
            for conn in paused:
                conn.resume_reading()
        sink.on_drained = drained

    def _stdin_session_ended(self) -> None:
        container = self.shim.container
        if self.shim.config.stdin_once and container.stdin is not None and container.master < 0:
            # stdin_once: the container sees EOF when the first attach session that wrote to it ends
            container.stdin.close()
            container.stdin = None

    def op_resize(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        width, height = message.get("width"), message.get("height")
        if not isinstance(width, int) or not isinstance(height, int) or not (0 <= width < 65536) or \
                not (0 <= height < 65536):
            raise ShimError("InvalidArgument", f"bad window size {width!r}x{height!r}")
        container_id = self.shim.config.id
        exec_id = message.get("exec_id") or ""
        if exec_id:
            fd = self.shim.execs.master_of(exec_id)
        else:
            fd = self.shim.container.master
        if fd < 0:
            raise ShimError("FailedPrecondition", f"{container_id}: {'exec ' + exec_id if exec_id else 'container'}"
                            " has no terminal")
        try:
            pty.set_window_size(fd, width, height)
        except OSError as exc:
            raise ShimError("Internal", f"{container_id}: resize failed: {exc.strerror}") from None
        reply(protocol.reply_ok())
