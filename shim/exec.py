"""Exec sessions: `<executor> exec --detach --process F --pid-file P ID` (the resident executor's exec is started
by the shim itself, shim/exec_launch.py), then the exec'd process is the shim's child (its subreaper). Its output
goes to its caller in frames (never into the container's log); a session whose caller goes away, or whose timeout
passes, has its whole process tree killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime import errors
from runtime.bundle import exec_process
from runtime.procs import descendants
from shim import protocol
from shim.console import close_console, receive_console, resize_from_frame
from shim.exec_launch import start_exec
from shim.io import pty
from shim.io.output import output_pipe
from shim.io.streams import Conn, Sink
from shim.log import log
from shim.loop import read_available
from shim.protocol import ShimError
from shim.spawn import CommandResult

if TYPE_CHECKING:
    from shim.server import Reply, Shim

EXEC_OUTPUT_GRACE = 2.0  # after an exec's process ended, how long its pipes may stay open (background kids)


class ExecSession:
    def __init__(self, conn: Conn, exec_id: str, tty: bool, timeout: float) -> None:
        self.conn = conn
        self.id = exec_id
        self.tty = tty
        self.timeout = timeout
        self.pid = 0
        self.outputs: dict[int, int] = {}     # fd -> stream id
        self.stdin: Sink | None = None
        self.master = -1
        self.status: int | None = None
        self.timed_out = False
        self.started_at = 0
        self.finished_at = 0
        self.done = False
        self.timers: list[int] = []
        self.files: list[str] = []


class ExecSessions:
    def __init__(self, shim: Shim) -> None:
        self.shim = shim
        self.loop = shim.loop
        self.id = shim.config.id
        self.sessions: dict[str, ExecSession] = {}
        self._seq = 0
        self.prefix = "exec"  # exec ids: prefix + a number
        # a delegate tells its monitor about its sessions' terminals (the `resize` op with an exec id is served there)
        self.tty_started: Callable[[ExecSession], None] | None = None
        self.tty_ended: Callable[[ExecSession], None] | None = None

    def master_of(self, exec_id: str) -> int:
        session = self.sessions.get(exec_id)
        if session is None or session.done:
            raise ShimError("NotFound", f"{self.id}: no running exec {exec_id!r}")
        return session.master

    def conn_closed(self, conn: Conn) -> None:
        for session in list(self.sessions.values()):
            if session.conn is conn and not session.done:
                # nobody listens any more: the exec's processes are not left running unobserved
                self._kill(session)

    # --- starting one ---------------------------------------------------------------------------------------

    def op_exec(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        container = self.shim.container
        if container.state not in ("running", "starting"):
            raise ShimError("FailedPrecondition", f"container {self.id} is {container.state}, not running")
        args = message.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            raise ShimError("InvalidArgument", f"{self.id}: exec needs a non-empty list of arguments")
        env = message.get("env") or []
        if not isinstance(env, list) or not all(isinstance(e, str) and "=" in e for e in env):
            raise ShimError("InvalidArgument", f"{self.id}: exec env must be a list of NAME=value")
        tty = bool(message.get("tty"))
        timeout = message.get("timeout") or 0
        if not isinstance(timeout, int | float) or timeout < 0:
            raise ShimError("InvalidArgument", f"bad exec timeout {timeout!r}")
        width, height, cwd = message.get("width"), message.get("height"), message.get("cwd")
        try:
            # the container's own process (user, capabilities, no_new_privs, rlimits, ...): its identity
            process = exec_process(
                container.spec.get("process") or {}, args, tty=tty, env=env, cwd=cwd if isinstance(cwd, str) else "",
                console_size=(width, height) if isinstance(width, int) and isinstance(height, int) else None)
        except errors.CrispError as exc:
            raise ShimError(errors.kind_of(exc), f"{self.id}: {exc}") from None
        self._seq += 1
        session = ExecSession(conn, f"{self.prefix}{self._seq}", tty, float(timeout))
        resident = self.shim.executor.resident is not None
        argv: list[str] = []
        if not resident:
            spec_path = self.shim.path(f"{session.id}.json")
            pid_path = self.shim.path(f"{session.id}.pid")
            session.files = [spec_path, pid_path]
            _write_new(spec_path, json.dumps(process).encode())
            argv = ["exec", "--detach", "--process", spec_path, "--pid-file", pid_path]

        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        child_fds = [devnull]
        console: socket.socket | None = None
        console_name = ""
        stdio = (devnull, devnull, devnull)
        try:
            if tty:
                console_name = f"{session.id}.sock"
                console = pty.console_listener(console_name)
                session.files.append(self.shim.path(console_name))
                argv += ["--console-socket", console_name]
            else:
                out_r, out_w = output_pipe()
                err_r, err_w = output_pipe()
                child_fds += [out_w, err_w]
                for fd, stream in ((out_r, protocol.STREAM_STDOUT), (err_r, protocol.STREAM_STDERR)):
                    os.set_blocking(fd, False)
                    session.outputs[fd] = stream
                stdin_fd = devnull
                if message.get("stdin"):
                    in_r, in_w = os.pipe2(os.O_CLOEXEC)
                    child_fds.append(in_r)
                    session.stdin = Sink(self.loop, in_w)
                    stdin_fd = in_r
                stdio = (stdin_fd, out_w, err_w)
            since = time.monotonic()
            session.started_at = time.time_ns()

            def started(pid: int, error: ShimError | None) -> None:
                if console is not None:
                    self._await_console(session, console, pid, error, since, reply)
                else:
                    self._launched(session, pid, error, since, reply)

            self.sessions[session.id] = session
            if resident:
                start_exec(self.loop, self.shim.config.executor_root, self.id, process, stdio, console_name or None,
                           started)
            else:
                self.shim.executor.run([*argv, self.id], lambda result, offset: started(*self._pid_of(session, result,
                                                                                                      offset)),
                                       stdin=stdio[0], stdout=stdio[1], stderr=stdio[2])
        except (OSError, ShimError) as exc:
            self.sessions.pop(session.id, None)
            if console is not None:
                console.close()
            self._cleanup(session)
            if isinstance(exc, ShimError):
                raise self._refusal(exc) from None
            raise ShimError("Internal", f"{self.id}: cannot run the executor for exec: {exc}") from None
        finally:
            for fd in child_fds:
                os.close(fd)

    def _pid_of(self, session: ExecSession, result: CommandResult, offset: int) -> tuple[int, ShimError | None]:
        """The exec'd process's pid from the executor command's pid file, or the command's failure."""
        if not result.ok:
            return 0, self.shim.executor.error(result, offset)
        try:
            with open(session.files[1]) as f:
                return int(f.read().strip()), None
        except (OSError, ValueError) as exc:
            return 0, ShimError(errors.INTERNAL, f"{self.id}: no pid file from the executor: {exc}")

    def _await_console(self, session: ExecSession, console: socket.socket, pid: int, error: ShimError | None,
                       since: float, reply: Reply) -> None:
        def finish(master: int, problem: str) -> None:
            if master >= 0:
                session.master = master
                reader = os.dup(master)
                os.set_blocking(reader, False)
                session.outputs[reader] = protocol.STREAM_STDOUT
                session.stdin = Sink(self.loop, master, owns_fd=True)
            if problem and error is None:
                self._failed(session, reply, ShimError(errors.INTERNAL, f"{self.id}: {problem}"))
                return
            self._launched(session, pid, error, since, reply)

        if error is not None:
            close_console(self.loop, console)
            finish(-1, "")
            return
        receive_console(self.loop, console, finish)

    def _failed(self, session: ExecSession, reply: Reply, error: ShimError) -> None:
        session.done = True
        self.sessions.pop(session.id, None)
        self._cleanup(session)
        reply(self._refusal(error).reply())

    def _refusal(self, error: ShimError) -> ShimError:
        """An exec's failure as its caller gets it. The container's init may have died after op_exec's check (a
        probe racing the container's end): the executor then refuses the exec; the init's exit is ours to reap,
        and the refusal is the caller's precondition."""
        if self.shim.container.exited():
            return ShimError("FailedPrecondition", f"container {self.id} exited while an exec was starting "
                             f"({error.message})")
        return error

    def _launched(self, session: ExecSession, pid: int, error: ShimError | None, since: float,
                  reply: Reply) -> None:
        if error is not None:
            self._failed(session, reply, error)
            return
        session.pid = pid
        conn = session.conn
        if session.master >= 0 and self.tty_started is not None:
            self.tty_started(session)  # before the caller learns the exec id
        self.shim.point("shim.exec")
        reply(protocol.reply_ok(exec_id=session.id, pid=session.pid, tty=session.tty))
        conn.framed = True

        def on_frame(stream: int, payload: bytes) -> None:
            if stream == protocol.STREAM_STDIN and session.stdin is not None:
                if not payload:
                    if session.master < 0:
                        session.stdin.close()
                        session.stdin = None
                    else:
                        session.stdin.write(b"\x04")  # EOF on a terminal is ^D
                else:
                    session.stdin.write(payload)
                    if session.stdin.paused:
                        conn.pause_reading()
                        sink = session.stdin

                        def drained() -> None:
                            sink.on_drained = None
                            conn.resume_reading()
                        sink.on_drained = drained
            elif stream == protocol.STREAM_RESIZE and session.master >= 0:
                resize_from_frame(session.master, payload)

        conn.on_frame = on_frame
        for fd in session.outputs:
            self.loop.add_reader(fd, self._reader(session, fd))
        conn.on_flushed = lambda: self._resume_outputs(session)
        self.loop.watch_child(session.pid, lambda status: self._exited(session, status), since=since)
        if session.timeout > 0:
            session.timers.append(self.loop.call_later(session.timeout, lambda: self._timeout(session)))
        if conn.closed:  # the client gave up while the exec was being set up
            self._kill(session)

    # --- output, exit ---------------------------------------------------------------------------------------

    def _reader(self, session: ExecSession, fd: int) -> Callable[[], None]:
        stream = session.outputs[fd]

        def on_readable() -> None:
            for _ in range(16):
                if session.conn.backlog > protocol.MAX_ATTACH_BACKLOG:
                    # the client reads slowly: stop reading, the exec's process waits on its pipe
                    self.loop.remove_reader(fd)
                    return
                data = read_available(fd, 1 << 17)
                if data is None:
                    return
                if not data:
                    self._output_closed(session, fd)
                    return
                session.conn.send_frame(stream, data)
        return on_readable

    def _resume_outputs(self, session: ExecSession) -> None:
        for fd in session.outputs:
            self.loop.add_reader(fd, self._reader(session, fd))

    def _output_closed(self, session: ExecSession, fd: int) -> None:
        self.loop.forget(fd)
        os.close(fd)
        del session.outputs[fd]
        self._maybe_done(session)

    def _exited(self, session: ExecSession, status: int) -> None:
        session.status = status
        session.finished_at = time.time_ns()
        # the pipes may be held open by processes the exec left behind: they get a grace period, then are cut
        session.timers.append(self.loop.call_later(EXEC_OUTPUT_GRACE, lambda: self._cut_outputs(session)))
        if session.master >= 0:
            # a pty gives EIO once every slave fd is closed; read what is there now
            for fd in list(session.outputs):
                self._reader(session, fd)()
        self._maybe_done(session)

    def _cut_outputs(self, session: ExecSession) -> None:
        for fd in list(session.outputs):
            self._reader(session, fd)()
            if fd in session.outputs:
                self._output_closed(session, fd)

    def _maybe_done(self, session: ExecSession) -> None:
        if session.done or session.status is None or session.outputs:
            return
        session.done = True
        if session.master >= 0 and self.tty_ended is not None:
            self.tty_ended(session)  # before the caller hears of the end
        for timer in session.timers:
            self.loop.cancel(timer)
        code, sig = protocol.wait_status_to_exit(session.status)
        result = {"exit_code": code, "signal": sig, "started_at": session.started_at,
                  "finished_at": session.finished_at, "timed_out": session.timed_out}
        session.conn.send_frame(protocol.STREAM_EXIT, json.dumps(result).encode())
        session.conn.close_after_flush()
        self.sessions.pop(session.id, None)
        self._cleanup(session)

    def _cleanup(self, session: ExecSession) -> None:
        if session.master >= 0 and self.tty_ended is not None:
            self.tty_ended(session)
        for fd in list(session.outputs):
            self.loop.forget(fd)
            os.close(fd)
        session.outputs.clear()
        if session.stdin is not None:
            session.stdin.close()
            session.stdin = None
        elif session.master >= 0:
            os.close(session.master)
        session.master = -1
        for name in session.files:
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass

    def _timeout(self, session: ExecSession) -> None:
        if session.status is None:
            log(f"exec {session.id} in {self.id} timed out after {session.timeout}s: killing it")
            session.timed_out = True
            self._kill(session)

    def _kill(self, session: ExecSession) -> None:
        """SIGKILL the exec's process and every process below it."""
        if not session.pid or session.status is not None:
            return
        # the exec's process first: a shell must not get to run on between its children's deaths and its own
        for pid in [session.pid, *descendants(session.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _write_new(path: str, data: bytes) -> None:
    """The exec's process file: read once by the executor right away and removed with the session; a crash loses
    the exec anyway, so no fsync (write_file_atomic's) on the exec path."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
