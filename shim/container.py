"""The container's init process: create, start, state, kill, wait, its exit, and shutdown (delete).

States: new -> creating -> created -> running -> stopped. The shim is the child subreaper of everything the
executor starts, so the init becomes its child as soon as `create` returns and its exit is caught by the loop's
reaper whenever it happens (before `start` returned, even before `create` did).

On exit: output that is already in the pipes goes to the log first, then the status is written atomically to
status.json, then waiters and attachers hear about it. The shim stays until crispd says `shutdown` (it has collected
the status, or wants the container gone): then it deletes the container, unmounts the rootfs it mounted, removes
its own files and exits. A `delete` that fails leaves all of that in place (the record that something is left) and
answers the shutdown with the executor's error.
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
from runtime.bundle import load_config
from shim import protocol
from shim.console import close_console, receive_console
from shim.executor import STEP_TIMEOUT
from shim.io import pty
from shim.io.cri_log import STDERR, STDOUT
from shim.io.output import Output, output_pipe
from shim.io.streams import Conn, Sink
from shim.log import log
from shim.loop import read_available
from shim.oom import OomCounter
from shim.protocol import ExitStatus, ShimError
from shim.rootfs import mount_rootfs, unmount_rootfs
from shim.spawn import CommandResult
from shim.start import start_in_loop

if TYPE_CHECKING:
    from shim.server import Reply, Shim

CONSOLE_NAME = "console.sock"
INIT_PID_NAME = "init.pid"
UPDATE_NAME = "update.json"  # the resources of an update, for the executor's --resources
EXEC_WAIT = 2.0  # how long `start` waits for the init's final exec before it answers all the same


class Container:
    def __init__(self, shim: Shim) -> None:
        self.shim = shim
        self.config = shim.config
        self.id = shim.config.id
        self.state = "new"
        self.pid = 0
        self.status: ExitStatus | None = None
        self.started_at = 0
        self.oom = OomCounter()
        self.waiters: list[Reply] = []
        self.outputs: list[Output] = []
        self.stdin: Sink | None = None
        self.master = -1           # the container's pty master
        self.rootfs_mounted = ""
        self.spec: dict[str, Any] = {}
        # the init is this process's child (False in a delegate: it is the monitor's, and ends unseen)
        self.watched = True
        self._shutdown_replies: list[Reply] = []
        self._shutting_down = False
        self._kills_in_flight = 0
        self._after_kills: list[Any] = []

    @property
    def cgroup_dir(self) -> str:
        if not self.config.cgroup2_mount or not self.config.cgroup:
            return ""
        return os.path.join(self.config.cgroup2_mount, self.config.cgroup.lstrip("/"))

    # --- create ---------------------------------------------------------------------------------------------

    def op_create(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        if self.state != "new":
            raise ShimError("AlreadyExists", f"container {self.id} is already {self.state}")
        self.state = "creating"
        # hold (the systemd cgroup driver): crispd puts the container's first process into its scope before that
        # process starts; the executor reports its pid on fd 3 and waits, the shim passes it on as a first reply,
        # {"held": pid}
        hold = bool(message.get("hold"))

        def mounted(target: str, error: str) -> None:
            if error:
                self._create_failed(reply, ShimError("Internal", f"{self.id}: {error}"))
                return
            self.rootfs_mounted = target
            self.shim.point("shim.rootfs")
            self._create_container(reply, hold)

        try:
            self.spec = load_config(self.config.bundle)
            mounting = self.config.mount_rootfs and mount_rootfs(self.shim.loop, self.config.bundle, self.spec,
                                                                 mounted)
        except errors.CrispError as exc:
            self._create_failed(reply, ShimError(errors.kind_of(exc), f"{self.id}: {exc}"))
            return
        if not mounting:
            self._create_container(reply, hold)

    def _create_container(self, reply: Reply, hold: bool) -> None:
        process = self.spec.get("process") or {}
        tty = bool(process.get("terminal")) if isinstance(process, dict) else False
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        child_fds = [devnull]
        console: socket.socket | None = None
        args = ["create", "--bundle", self.config.bundle, "--pid-file", self.shim.path(INIT_PID_NAME)]
        held_w: int | None = None
        if hold:
            held_r, held_w = os.pipe2(os.O_CLOEXEC)
            child_fds.append(held_w)
            args += ["--held-pid-fd", "3"]
            self._relay_held_pid(held_r, reply)
        stdio = (devnull, devnull, devnull)
        try:
            if tty:
                console = pty.console_listener(CONSOLE_NAME)
                args += ["--console-socket", CONSOLE_NAME]
            else:
                out_r, out_w = output_pipe()
                err_r, err_w = output_pipe()
                child_fds += [out_w, err_w]
                self.outputs = [Output(self.shim.loop, out_r, STDOUT, protocol.STREAM_STDOUT, self.on_output),
                                Output(self.shim.loop, err_r, STDERR, protocol.STREAM_STDERR, self.on_output)]
                stdin_fd = devnull
                if self.config.stdin:
                    in_r, in_w = os.pipe2(os.O_CLOEXEC)
                    child_fds.append(in_r)
                    self.stdin = Sink(self.shim.loop, in_w)
                    stdin_fd = in_r
                stdio = (stdin_fd, out_w, err_w)
            args.append(self.id)
            self.oom.start(self.cgroup_dir)
            since = time.monotonic()

            def created(result: CommandResult, offset: int) -> None:
                if console is not None:
                    self._await_console(console, result, offset, since, reply)
                else:
                    self._created(result, offset, since, reply)

            self.shim.executor.run(args, created, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2], fd3=held_w)
        except OSError as exc:
            if console is not None:
                console.close()
            self._create_failed(reply, ShimError("Internal", f"{self.id}: cannot run the executor: {exc}"))
        finally:
            for fd in child_fds:
                os.close(fd)

    def _relay_held_pid(self, fd: int, reply: Reply) -> None:
        """The executor's line on the held-pid pipe ("<pid>\\n") becomes the first reply of a held create."""
        os.set_blocking(fd, False)
        data = bytearray()

        def on_readable() -> None:
            chunk = read_available(fd)
            if chunk is None:
                return
            data.extend(chunk)
            if chunk and b"\n" not in data:
                return
            self.shim.loop.forget(fd)
            os.close(fd)
            text = bytes(data).strip()
            if text.isdigit():
                reply(protocol.reply_ok(held=int(text)))
            # else the executor ended without one: its failure is the create's reply

        self.shim.loop.add_reader(fd, on_readable)

    def _await_console(self, console: socket.socket, result: CommandResult, offset: int, since: float,
                       reply: Reply) -> None:
        def finish(master: int, error: str) -> None:
            try:
                os.unlink(self.shim.path(CONSOLE_NAME))
            except FileNotFoundError:
                pass
            if master >= 0:
                self.master = master
                self.outputs = [Output(self.shim.loop, os.dup(master), STDOUT, protocol.STREAM_STDOUT,
                                       self.on_output)]
                os.set_inheritable(self.master, False)
                self.stdin = Sink(self.shim.loop, master, owns_fd=True)
            if error and result.ok:
                self._create_failed(reply, ShimError("Internal", f"{self.id}: {error}"))
                return
            self._created(result, offset, since, reply)

        if not result.ok:
            close_console(self.shim.loop, console)
            finish(-1, "")
            return
        receive_console(self.shim.loop, console, finish)

    def _created(self, result: CommandResult, offset: int, since: float, reply: Reply) -> None:
        if not result.ok:
            self._create_failed(reply, self.shim.executor.error(result, offset))
            return
        try:
            with open(self.shim.path(INIT_PID_NAME)) as f:
                self.pid = int(f.read().strip())
        except (OSError, ValueError) as exc:
            self._create_failed(reply, ShimError("Internal", f"{self.id}: no pid file from the executor: {exc}"))
            return
        self.state = "created"
        # the init is our child now (we are its subreaper); its exit is claimed even if it already happened
        self.shim.loop.watch_child(self.pid, self._on_exit, since=since)
        log(f"container {self.id} created, init pid {self.pid}")
        self.shim.point("shim.created")
        reply(protocol.reply_ok(pid=self.pid))

    def _create_failed(self, reply: Reply, error: ShimError) -> None:
        log(f"create failed: {error.message}")

        def undone() -> None:
            reply(protocol.reply_error(error.kind, error.message))
            # nothing to watch: the shim goes once the answer is out
            self.shim.exit_when_flushed()

        self._undo_create(undone)

    def _undo_create(self, done: Any) -> None:
        def deleted(_: CommandResult, __: int) -> None:
            self.unmount(done)

        for out in self.outputs:
            out.close()
        self.outputs = []
        if self.stdin is not None:
            self.stdin.close()
            self.stdin = None
        self.shim.executor.run(["delete", "--force", self.id], deleted)

    def unmount(self, done: Any) -> None:
        target = self.rootfs_mounted
        if not target:
            done()
            return

        def unmounted() -> None:
            self.rootfs_mounted = ""
            done()

        unmount_rootfs(self.shim.loop, target, unmounted, self.config.bundle, self.spec)

    # --- start, state, kill, wait ---------------------------------------------------------------------------

    def op_start(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        if self.state == "stopped" and self.started_at == 0:
            raise ShimError("FailedPrecondition", f"container {self.id} exited before it was started "
                            f"(exit code {self.status.exit_code if self.status else '?'})")
        if self.state != "created":
            raise ShimError("FailedPrecondition", f"container {self.id} is {self.state}, not created")
        self.state = "starting"
        self.started_at = time.time_ns()

        def answer() -> None:
            log(f"container {self.id} started")
            self.shim.point("shim.started")
            reply(protocol.reply_ok(pid=self.pid, started_at=self.started_at))
            self.shim.handoff.soon()

        def started(error: ShimError | None) -> None:
            if self.state == "starting":
                if error is None:
                    self.state = "running"
                else:
                    self.state = "created"
                    self.started_at = 0
            if error is None and self.shim.executor.resident is not None:
                self._after_exec(answer)
            elif error is None or self.status is not None:
                answer()  # an init that exited before `start` returned was started all the same
            else:
                reply(error.reply())

        if self.shim.executor.resident is not None:
            try:  # without a command (shim/start.py), unless the loop must not do it
                if start_in_loop(self.shim.loop, self.config.executor_root, self.id, STEP_TIMEOUT, started):
                    return
            except ShimError:
                self.state = "created"
                self.started_at = 0
                raise
        self.shim.executor.run(["start", self.id], lambda result, offset: started(
            None if result.ok else self.shim.executor.error(result, offset)))

    def _after_exec(self, then: Callable[[], None]) -> None:
        """Call `then` once the init has made its final exec (or ended): `start` only let it go, and a caller told
        "started" expects the container's program, not crisp's Python, in the container (an exec right after, a
        `ps`). The resident executor's init runs the zygote's sealed interpreter until then; EXEC_WAIT at most."""
        own = os.readlink("/proc/self/exe")
        deadline = time.monotonic() + EXEC_WAIT

        def check() -> None:
            try:
                running = os.readlink(f"/proc/{self.pid}/exe")
            except OSError:
                running = ""  # ended (or a zombie): its exit is on its way
            if running != own or self.status is not None or time.monotonic() > deadline:
                then()
            else:
                self.shim.loop.call_later(0.001, check)

        check()

    def exited(self) -> bool:
        """Whether the init has ended, as far as can be known now."""
        if self.watched:
            self.shim.loop.reap()
            return self.state == "stopped"
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                return f.read().rpartition(b")")[2].split()[0] in (b"Z", b"X")
        except (OSError, IndexError):
            return True

    @property
    def busy(self) -> bool:
        """A shutdown or a kill --all is under way."""
        return self._shutting_down or bool(self._kills_in_flight or self._shutdown_replies or self._after_kills)

    def state_json(self) -> dict[str, Any]:
        state = "running" if self.state == "starting" else self.state
        body: dict[str, Any] = {"id": self.id, "state": state, "pid": self.pid, "started_at": self.started_at,
                                "shim_pid": os.getpid()}
        if self.status is not None:
            body["status"] = self.status.to_json()
        return body

    def op_state(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        reply(protocol.reply_ok(**self.state_json()))

    def op_kill(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        sig = message.get("signal", signal.SIGTERM)
        if not isinstance(sig, int) or not 0 < sig < signal.NSIG:
            raise ShimError("InvalidArgument", f"bad signal {sig!r}")
        if self.state in ("new", "creating"):
            raise ShimError("FailedPrecondition", f"container {self.id} is not created yet")
        if self.status is not None and not message.get("all"):
            reply(protocol.reply_ok())  # already gone: nothing to signal
            return
        if not message.get("all"):
            # the init cannot be reaped (and its pid reused) by anyone but us, so this pid is still the init
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            reply(protocol.reply_ok())
            return

        def killed(result: CommandResult, offset: int) -> None:
            if result.ok or self.status is not None:
                reply(protocol.reply_ok())
            else:
                reply(self.shim.executor.error(result, offset).reply())

        self._kill_all(str(sig), killed)

    def _kill_all(self, sig: str, done: Any) -> None:
        """`kill --all`, counted: runc freezes the cgroup while it signals every process, and a delete that finds
        a stopped container's cgroup frozen fails ("invalid state transition from stopped to paused"), so a
        delete waits for the kills in flight."""
        self._kills_in_flight += 1

        def killed(result: CommandResult, offset: int) -> None:
            self._kills_in_flight -= 1
            done(result, offset)
            if not self._kills_in_flight:
                after, self._after_kills = self._after_kills, []
                for then in after:
                    then()

        self.shim.executor.run(["kill", "--all", self.id, sig], killed)

    def op_wait(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        if self.state in ("new", "creating"):
            raise ShimError("FailedPrecondition", f"container {self.id} is not created yet")
        if self.status is not None:
            reply(protocol.reply_ok(status=self.status.to_json()))
        else:
            self.waiters.append(reply)

    def op_update(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        """New limits (an OCI `linux.resources`) through the executor's `update`, as runc has it: the executor
        owns the container's cgroup."""
        resources = message.get("resources")
        if not isinstance(resources, dict):
            raise ShimError("InvalidArgument", f"{self.id}: update needs the resources as an object")
        if self.state not in ("created", "starting", "running"):
            raise ShimError("FailedPrecondition", f"container {self.id} is {self.state}: nothing to update")
        path = self.shim.path(UPDATE_NAME)
        protocol.write_file_atomic(path, json.dumps(resources).encode(), 0o600)

        def updated(result: CommandResult, offset: int) -> None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            if result.ok:
                log(f"container {self.id}: resources updated")
                reply(protocol.reply_ok())
            else:
                reply(self.shim.executor.error(result, offset).reply())

        self.shim.executor.run(["update", "--resources", path, self.id], updated)

    # --- output and exit ------------------------------------------------------------------------------------

    def on_output(self, output: Output, data: bytes) -> None:
        self.shim.log.write(output.stream, data)
        self.shim.attach.forward(output.stream_id, data)

    def _on_exit(self, wait_status: int) -> None:
        finished = time.time_ns()
        for out in self.outputs:
            out.drain()
        code, sig = protocol.wait_status_to_exit(wait_status)
        oom = self.oom.killed(sig)
        self.status = ExitStatus(exit_code=code, signal=sig, started_at=self.started_at, finished_at=finished,
                                 oom_killed=oom)
        try:
            protocol.write_status_file(self.shim.path(protocol.STATUS_NAME), self.id, self.pid, self.status)
        except OSError as exc:
            log(f"cannot write the status file: {exc}")
        self.state = "stopped"
        log(f"container {self.id} exited: code {code}" + (f" (signal {sig})" if sig else "") +
            (" oom-killed" if oom else ""))
        self.shim.point("shim.exited")
        for reply in self.waiters:
            reply(protocol.reply_ok(status=self.status.to_json()))
        self.waiters.clear()
        self.shim.attach.container_exited(self.status)
        if self.stdin is not None:
            self.stdin.close()
            self.stdin = None
        if self.started_at:
            self.shim.handoff.soon()

    # --- shutdown -------------------------------------------------------------------------------------------

    def op_shutdown(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        force = bool(message.get("force"))
        if self.state == "new":
            reply(protocol.reply_ok())
            self.shim.exit_when_flushed()
            return
        if self.state in ("creating", "starting"):
            raise ShimError("FailedPrecondition", f"container {self.id} is {self.state}; try again")
        if self.status is None and not force:
            raise ShimError("FailedPrecondition", f"container {self.id} is {self.state}: stop it first "
                            "(or shut down with force)")
        self._shutdown_replies.append(reply)
        if self._shutting_down:
            return
        self._shutting_down = True
        if self.status is None:
            log(f"shutdown with force: killing container {self.id}")
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._kill_all("KILL", lambda result, offset: None)
            self.waiters.append(lambda answer: self._delete_and_exit())
        else:
            self._delete_and_exit()

    def _delete_and_exit(self) -> None:
        if self._kills_in_flight:
            self._after_kills.append(self._delete_and_exit)
            return

        def deleted(result: CommandResult, offset: int) -> None:
            if not result.ok:
                self._delete_failed(self.shim.executor.error(result, offset))
                return
            self.shim.point("shim.deleted")
            self.unmount(finished)

        def finished() -> None:
            for out in self.outputs:
                out.close()
            self.shim.log.close()
            for name in (protocol.SOCKET_NAME, protocol.INFO_NAME, INIT_PID_NAME):
                try:
                    os.unlink(self.shim.path(name))
                except FileNotFoundError:
                    pass
            log(f"container {self.id} deleted; shim exits")
            for reply in self._shutdown_replies:
                reply(protocol.reply_ok())
            self.shim.exit_when_flushed()

        self.shim.executor.run(["delete", "--force", self.id], deleted)

    def _delete_failed(self, error: ShimError) -> None:
        """The container may still hold processes, mounts or its cgroup: nothing of the record goes (shim.json,
        the socket, the rootfs mount); the shim keeps serving, and a later shutdown tries again."""
        log(f"{error.message}; keeping the container's record for another try")
        replies, self._shutdown_replies = self._shutdown_replies, []
        self._shutting_down = False
        for reply in replies:
            reply(error.reply())
