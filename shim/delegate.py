"""A delegate: one request that crisp-monitor does not serve itself (exec, update, kill --all, delete), served by a
Python process that crispd's zygote forks for it (shim/zygote.py). The monitor sends the zygote the request, the
container's state and the connection to answer on; the delegate runs the request with the shim's own code and exits
once that connection has closed and nothing it started is left.

The container's init is the monitor's child, not the delegate's: the delegate never waits for it and learns that it
ended from /proc. An exec's processes are the delegate's (its subreaper), and end with the session.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import json
import os
import socket
import time
from typing import Any, NoReturn

from runtime import errors, failpoints
from runtime.bundle import load_config
from runtime.linux import syscalls
from runtime.procs import set_process_title
from shim import protocol
from shim.exec import ExecSession
from shim.io.streams import Conn
from shim.log import log
from shim.protocol import ShimConfig, ShimError
from shim.server import Reply, Shim
from shim.spawn import CommandResult

NAME = "crisp-delegate"
LINGER_CHECK = 0.05  # after its connection closed: how often the delegate looks whether its sessions are over
OPS = ("exec", "update", "kill", "delete")


def check_request(request: dict[str, Any]) -> None:
    """ValueError unless the zygote's request is one a delegate can serve."""
    if not isinstance(request.get("bundle"), str) or not os.path.isabs(request["bundle"]):
        raise ValueError("bundle must be an absolute path")
    state, op = request.get("state"), request.get("op")
    if not isinstance(state, dict) or not isinstance(state.get("pid"), int) or \
            state.get("state") not in ("running", "stopped"):
        raise ValueError("state must name the container's state and pid")
    if not isinstance(op, dict) or op.get("op") not in OPS:
        raise ValueError(f"a delegate serves {', '.join(OPS)}, not {op.get('op') if isinstance(op, dict) else op!r}")


def become_delegate(request: dict[str, Any], fd: int, ctl: int = -1) -> NoReturn:
    """The body of a forked, detached delegate; it never returns. `ctl`, for an exec: a seqpacket socket to the
    monitor, which learns there the terminal of a tty session (to serve `resize` with its exec id)."""
    from shim.main import ignore_signals, setup_stdio

    code = 1
    sock = socket.socket(fileno=fd)
    try:
        bundle = request["bundle"]
        os.chdir(bundle)
        setup_stdio(bundle)
        ignore_signals()
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)  # an exec's processes are ours once the executor leaves
        with open(protocol.INFO_NAME, "rb") as f:
            config = ShimConfig.from_json(json.loads(f.read())["config"])
        try:
            set_process_title(NAME, config.id)
        except OSError:
            pass
        _serve(config, request["state"], request["op"], sock, socket.socket(fileno=ctl) if ctl >= 0 else None)
        code = 0
    except (ShimError, errors.CrispError, OSError, ValueError, KeyError) as exc:
        kind = exc.kind if isinstance(exc, ShimError) else errors.kind_of(exc) \
            if isinstance(exc, errors.CrispError) else "Internal"
        log(f"delegate failed: {exc}")
        try:
            sock.setblocking(True)
            sock.sendall(protocol.encode(protocol.reply_error(kind, f"the shim's delegate failed: {exc}")))
        except OSError:
            pass
    os._exit(code)


class Delegate(Shim):
    """The shim's code for one request, part of the shim whose monitor asked for it: it goes when the monitor goes
    (`link`, the exec's news channel, ends then), as the work of a killed Python shim went with it."""

    def __init__(self, config: ShimConfig, link: socket.socket | None) -> None:
        super().__init__(dataclasses.replace(config, log_path=""))  # the monitor writes the container's log
        self.handoff.enabled = False
        self.link = link
        if link is not None:
            link.setblocking(False)
            self.loop.add_reader(link.fileno(), self._link_readable)

    def point(self, name: str) -> None:
        failpoints.check(name)
        if name in self.config.hang_points:
            log(f"debug: stopped at {name} until killed")
            if self.link is None:
                while True:
                    time.sleep(3600)
            with contextlib.suppress(OSError):  # until the monitor is gone (the shim killed): then go too
                self.link.setblocking(True)
                while self.link.recv(4096):
                    pass
            log(f"debug: the monitor is gone; the delegate stopped at {name} goes too")
            os._exit(1)

    def _link_readable(self) -> None:
        try:
            data = self.link.recv(4096) if self.link is not None else b""
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            return  # the monitor says nothing on it today
        assert self.link is not None
        self.loop.forget(self.link.fileno())
        log(f"the monitor of container {self.config.id} is gone: ending the delegate's sessions")
        error = {"kind": "Unavailable", "message": f"the shim of container {self.config.id} died"}
        for conn in list(self.conns):
            if conn.framed:
                conn.send_frame(protocol.STREAM_ERROR, json.dumps(error).encode())
            conn.close_after_flush()


def _serve(config: ShimConfig, state: dict[str, Any], message: dict[str, Any], sock: socket.socket,
           ctl: socket.socket | None) -> None:
    shim = Delegate(config, ctl)
    shim.loop.install_sigchld()
    container = shim.container
    container.state = state["state"]
    container.pid = state["pid"]
    container.started_at = int(state.get("started_at") or 0)
    container.rootfs_mounted = str(state.get("rootfs_mounted") or "")
    container.watched = False
    container.spec = load_config(config.bundle)
    shim.execs.prefix = f"exec{os.getpid()}-"  # unique among the delegates of one container
    if ctl is not None:
        told: set[str] = set()

        def tty_started(session: ExecSession) -> None:
            with contextlib.suppress(OSError):  # a monitor that is gone needs no news
                ctl.sendmsg([json.dumps({"op": "tty", "exec_id": session.id}).encode() + b"\n"],
                            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [session.master]))])
                told.add(session.id)

        def tty_ended(session: ExecSession) -> None:
            if session.id in told:
                told.discard(session.id)
                with contextlib.suppress(OSError):
                    ctl.send(json.dumps({"op": "done", "exec_id": session.id}).encode() + b"\n")

        shim.execs.tty_started = tty_started
        shim.execs.tty_ended = tty_ended
    shim.ops = {"exec": shim.execs.op_exec, "update": container.op_update, "kill": container.op_kill,
                "delete": lambda conn, message, reply: _delete(shim, reply)}

    def closed(conn: Conn) -> None:
        shim._conn_closed(conn)
        linger()

    def linger() -> None:
        if shim.execs.sessions:
            shim.loop.call_later(LINGER_CHECK, linger)
        else:
            shim.loop.stop()

    conn = Conn(shim.loop, sock, shim._dispatch, closed)
    shim.conns.add(conn)
    if message.get("op") != "exec":
        # one answer, then the delegate exits: its end of the socketpair closes with it, which is when its monitor
        # takes the answer (nothing of the delegate is left once the caller hears it)
        conn.on_flushed = shim.loop.stop
    log(f"delegate for {message.get('op')} of container {config.id}")
    shim._dispatch(conn, message)
    shim.run()


def _delete(shim: Shim, reply: Reply) -> None:
    """The executor's delete and the unmount of a rootfs the shim mounted: what a monitor's shutdown needs."""
    container = shim.container

    def deleted(result: CommandResult, offset: int) -> None:
        if not result.ok:
            reply(shim.executor.error(result, offset).reply())
            return
        container.unmount(lambda: reply(protocol.reply_ok()))

    shim.executor.run(["delete", "--force", container.id], deleted)
