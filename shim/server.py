"""The shim proper: one container, its control socket, and the dispatch of requests to the parts that serve them.

The parts (one job each): `container.py` the init process (create, start, state, kill, wait, exit, shutdown),
`exec.py` exec sessions, `attach.py` attach sessions and window sizes, `console.py` the pty master from the
executor, `rootfs.py` the overlay an OCI runtime needs mounted, `oom.py` OOM kills, `executor.py` the executor's
command line. All run on one thread, in the loop of `loop.py`; nothing here blocks.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from runtime import failpoints
from runtime.version import VERSION
from shim import protocol
from shim.attach import Attachments
from shim.container import Container
from shim.exec import ExecSessions
from shim.executor import Executor
from shim.handoff import Handoff
from shim.io.cri_log import CriLog
from shim.io.streams import Conn
from shim.log import log
from shim.loop import Loop
from shim.protocol import ShimConfig, ShimError

Reply = Callable[[dict[str, Any]], None]
Handler = Callable[[Conn, dict[str, Any], Reply], None]
FLUSH_GRACE = 2.0  # a client that does not read its last answer holds up a shim's exit this long at most


class Shim:
    def __init__(self, config: ShimConfig, loop: Loop | None = None) -> None:
        self.config = config
        self.loop = loop or Loop()
        self.bundle = config.bundle
        self.conns: set[Conn] = set()
        self.listener: socket.socket | None = None
        self.log = CriLog(config.log_path, config.log_max_line, warn=log)
        self.executor = Executor(self.loop, config)
        self.container = Container(self)
        self.attach = Attachments(self)
        self.execs = ExecSessions(self)
        self.handoff = Handoff(self)
        self.ops: dict[str, Handler] = {
            "create": self.container.op_create, "start": self.container.op_start,
            "state": self.container.op_state, "kill": self.container.op_kill, "wait": self.container.op_wait,
            "shutdown": self.container.op_shutdown, "update": self.container.op_update,
            "attach": self.attach.op_attach, "resize": self.attach.op_resize,
            "exec": self.execs.op_exec,
            "reopen_log": self.op_reopen_log, "debug": self.op_debug,
        }

    def path(self, name: str) -> str:
        return os.path.join(self.bundle, name)

    def point(self, name: str) -> None:
        """A step is done: if crispd's `[debug] hang_points` names it, stop here (the whole loop) until killed."""
        failpoints.check(name)
        if name in self.config.hang_points:
            log(f"debug: stopped at {name} until killed")
            while True:
                time.sleep(3600)

    # --- the control socket ---------------------------------------------------------------------------------

    def listen(self) -> None:
        path = self.path(protocol.SOCKET_NAME)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            probe.connect(protocol.SOCKET_NAME)  # relative to the bundle (our cwd): no sun_path length limit
            raise ShimError("AlreadyExists", f"{self.config.id}: a shim already serves {path}")
        except (FileNotFoundError, ConnectionRefusedError):
            pass
        finally:
            probe.close()
        try:
            os.unlink(protocol.SOCKET_NAME)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            sock.bind(protocol.SOCKET_NAME)
        finally:
            os.umask(old)
        sock.listen(64)
        sock.setblocking(False)
        self.listener = sock
        self.loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                log(f"accept on the control socket failed: {exc}")
                return
            self.conns.add(Conn(self.loop, sock, self._dispatch, self._conn_closed))

    def _conn_closed(self, conn: Conn) -> None:
        self.conns.discard(conn)
        self.attach.conn_closed(conn)
        self.execs.conn_closed(conn)

    def _dispatch(self, conn: Conn, message: dict[str, Any]) -> None:
        op = message.get("op")
        if message.get("v") != protocol.PROTOCOL_VERSION:
            conn.send_json(protocol.reply_error(
                "InvalidArgument", f"protocol version {message.get('v')!r} is not {protocol.PROTOCOL_VERSION}"))
            return
        handler = self.ops.get(op) if isinstance(op, str) else None
        if handler is None or not isinstance(op, str):
            conn.send_json(protocol.reply_error("Unimplemented", f"unknown operation {op!r}"))
            return
        conn.pending.append(op)

        def reply(answer: dict[str, Any]) -> None:
            if op in conn.pending:
                conn.pending.remove(op)
            conn.send_json(answer)

        try:
            handler(conn, message, reply)
        except ShimError as exc:
            reply(protocol.reply_error(exc.kind, exc.message))
        except Exception as exc:  # a bug: say so, keep serving the container
            log(f"{op} failed: {exc!r}")
            reply(protocol.reply_error("Internal", f"{self.config.id}: {op} failed: {exc!r}"))

    # --- the shim's own requests ----------------------------------------------------------------------------

    def op_debug(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        reply(protocol.reply_ok(pid=os.getpid(), modules=sorted(sys.modules),
                                threads=len(os.listdir("/proc/self/task")), version=VERSION))

    def op_reopen_log(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        try:
            self.log.reopen()
        except OSError as exc:
            raise ShimError("Internal", f"{self.config.id}: cannot reopen the log {self.config.log_path}: "
                            f"{exc.strerror}") from None
        reply(protocol.reply_ok())

    def exit_when_flushed(self) -> None:
        """Stop the loop once every reply is out (a client that does not read gets FLUSH_GRACE seconds)."""
        deadline = time.monotonic() + FLUSH_GRACE

        def check() -> None:
            if time.monotonic() > deadline or all(c.closed or c.backlog == 0 for c in self.conns):
                self.loop.stop()
            else:
                self.loop.call_later(0.01, check)
        self.loop.call_later(0, check)

    def run(self) -> None:
        self.loop.run()
