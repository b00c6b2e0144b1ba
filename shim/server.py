"""The shim proper: one container, driven through the executor's runc-style command line.

States: new -> creating -> created -> running -> stopped. The shim is the child subreaper of everything the
executor starts, so the container's init becomes its child as soon as `create` returns and its exit is caught by
the loop's reaper whenever it happens (before `start` returned, even before `create` did).

On exit: output that is already in the pipes goes to the log first, then the status is written atomically to
status.json, then waiters and attachers hear about it. The shim stays until crispd says `shutdown` (it has collected
the status, or wants the container gone): then it deletes the container, unmounts the rootfs it mounted, and exits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from runtime.version import VERSION
from shim import protocol
from shim.io import pty
from shim.io.cri_log import STDERR, STDOUT, CriLog
from shim.io.streams import Conn, Sink
from shim.loop import Loop, read_available
from shim.protocol import ExitStatus, ShimConfig, ShimError
from shim.spawn import CommandResult, run_command

OVERLAY_ANNOTATION = "io.crisp.rootfs.overlay"
STEP_TIMEOUT = 60.0          # any one executor, mount or umount command
CONSOLE_TIMEOUT = 10.0       # the pty master must arrive this long after the executor returned
EXEC_OUTPUT_GRACE = 2.0      # after an exec's process ended, how long its pipes may stay open (background kids)
PIPE_SIZE = 1 << 20          # the container's stdout/stderr pipes: room to keep writing while the shim is busy
MOUNT_DATA_MAX = 4000        # mount(2) options must fit in a page (with room to spare)

Reply = Callable[[dict[str, Any]], None]
_COMMANDS = ("create", "start", "state", "kill", "delete", "exec")


def log(message: str) -> None:
    """The shim's own diagnostics: one line on stderr, which is shim.log in the bundle."""
    try:
        os.write(2, f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} crisp-shim[{os.getpid()}]: "
                    f"{message}\n".encode(errors="replace"))
    except OSError:
        pass


def _pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        import fcntl
        fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size for an unprivileged user: the default size works, slower
    return r, w


class Output:
    """One output of the container (stdout, stderr, or the pty master as stdout)."""

    def __init__(self, shim: Shim, fd: int, stream: bytes, stream_id: int) -> None:
        self.shim = shim
        self.fd = fd
        self.stream = stream
        self.stream_id = stream_id
        self.open = True
        os.set_blocking(fd, False)
        shim.loop.add_reader(fd, self.on_readable)

    def on_readable(self, limit: int = 16) -> None:
        # a few reads per wakeup, so one busy stream cannot starve the other or the control socket
        for _ in range(limit):
            data = read_available(self.fd, 1 << 17)
            if data is None:
                return
            if not data:
                self.close()
                return
            self.shim.on_output(self, data)

    def drain(self) -> None:
        """Everything already in the pipe (the container has exited)."""
        while self.open:
            data = read_available(self.fd, 1 << 17)
            if not data:
                if data is not None:
                    self.close()
                return
            self.shim.on_output(self, data)

    def close(self) -> None:
        if self.open:
            self.open = False
            self.shim.loop.forget(self.fd)
            os.close(self.fd)


class Attacher:
    def __init__(self, shim: Shim, conn: Conn, stdin: bool, stdout: bool, stderr: bool) -> None:
        self.shim = shim
        self.conn = conn
        self.stdin = stdin
        self.streams = {protocol.STREAM_STDOUT} if stdout else set()
        if stderr:
            self.streams.add(protocol.STREAM_STDERR)


class ExecSession:
    """One exec: `<executor> exec --detach --process F --pid-file P ID`, then its process is the shim's child."""

    def __init__(self, shim: Shim, conn: Conn, exec_id: str, tty: bool, timeout: float) -> None:
        self.shim = shim
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


class Shim:
    def __init__(self, config: ShimConfig, loop: Loop | None = None) -> None:
        self.config = config
        self.loop = loop or Loop()
        self.bundle = config.bundle
        self.state = "new"
        self.pid = 0
        self.status: ExitStatus | None = None
        self.started_at = 0
        self.oom_before = 0
        self.parent_oom_before = 0
        self.conns: set[Conn] = set()
        self.waiters: list[Reply] = []
        self.attachers: dict[Conn, Attacher] = {}
        self.execs: dict[str, ExecSession] = {}
        self._exec_seq = 0
        self.outputs: list[Output] = []
        self.stdin: Sink | None = None
        self.master = -1           # the container's pty master
        self._stdin_once_used = False
        self.rootfs_mounted = ""
        self.listener: socket.socket | None = None
        self.log = CriLog(config.log_path, config.log_max_line, warn=log)
        self.spec: dict[str, Any] = {}
        self._shutdown_replies: list[Reply] = []
        self._shutting_down = False

    # --- paths and commands ---------------------------------------------------------------------------------

    def path(self, name: str) -> str:
        return os.path.join(self.bundle, name)

    def executor_argv(self, *args: str) -> list[str]:
        argv = [*self.config.executor, "--root", self.config.executor_root,
                "--log", self.path("executor.log"), "--log-format", "json", *args]
        if self.config.cgroup2_bind:
            # the executor sees cgroup v2 at /sys/fs/cgroup, in a mount namespace of its own (hybrid hosts)
            argv = protocol.with_cgroup2_at_sys_fs_cgroup(self.config.cgroup2_bind, argv)
        return argv

    def executor_error(self, result: CommandResult, log_offset: int) -> str:
        """The executor's own words about a failure: the last error in its log, else its output."""
        message = ""
        try:
            with open(self.path("executor.log"), "rb") as f:
                f.seek(log_offset)
                for line in f.read().splitlines():
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        text = line.decode(errors="replace").strip()
                        message = text or message
                        continue
                    if isinstance(entry, dict) and entry.get("level") in ("error", "fatal", "panic"):
                        message = str(entry.get("msg", "")) or message
        except OSError:
            pass
        name = os.path.basename(self.config.executor[0])
        command = next((a for a in result.argv if a in _COMMANDS), "")
        return f"{name} {command} failed ({result.describe()})" + (f": {message}" if message else "")

    def _log_size(self) -> int:
        try:
            return os.stat(self.path("executor.log")).st_size
        except OSError:
            return 0

    def run_executor(self, args: list[str], done: Callable[[CommandResult, int], None],
                     stdin: int | None = None, stdout: int | None = None, stderr: int | None = None,
                     fd3: int | None = None) -> int:
        """Start an executor command; returns its pid (`done` gets its result)."""
        offset = self._log_size()
        return run_command(self.loop, self.executor_argv(*args), lambda result: done(result, offset),
                           stdin=stdin, stdout=stdout, stderr=stderr, timeout=STEP_TIMEOUT, fd3=fd3)

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
        attacher = self.attachers.pop(conn, None)
        if attacher is not None and attacher.stdin:
            self._stdin_session_ended()
        for session in list(self.execs.values()):
            if session.conn is conn and not session.done:
                # nobody listens any more: the exec's processes are not left running unobserved
                self._kill_exec(session)

    def _dispatch(self, conn: Conn, message: dict[str, Any]) -> None:
        op = message.get("op")
        if message.get("v") != protocol.PROTOCOL_VERSION:
            conn.send_json(protocol.reply_error(
                "InvalidArgument", f"protocol version {message.get('v')!r} is not {protocol.PROTOCOL_VERSION}"))
            return
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) and op.isidentifier() else None
        if handler is None:
            conn.send_json(protocol.reply_error("Unimplemented", f"unknown operation {op!r}"))
            return

        def reply(answer: dict[str, Any]) -> None:
            conn.send_json(answer)

        try:
            handler(conn, message, reply)
        except ShimError as exc:
            reply(protocol.reply_error(exc.kind, exc.message))
        except Exception as exc:  # a bug: say so, keep serving the container
            log(f"{op} failed: {exc!r}")
            reply(protocol.reply_error("Internal", f"{self.config.id}: {op} failed: {exc!r}"))

    # --- create ---------------------------------------------------------------------------------------------

    def op_create(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        if self.state != "new":
            raise ShimError("AlreadyExists", f"container {self.config.id} is already {self.state}")
        self.state = "creating"
        try:
            with open(self.path("config.json"), "rb") as f:
                self.spec = json.loads(f.read())
        except (OSError, ValueError) as exc:
            self._create_failed(reply, ShimError("InvalidArgument", f"{self.config.id}: cannot read config.json: "
                                                 f"{exc}"))
            return
        try:
            overlay = self._overlay_options() if self.config.mount_rootfs else None
        except ShimError as exc:
            self._create_failed(reply, exc)
            return
        # hold (the systemd cgroup driver): crispd puts the container's first process into its scope before that
        # process starts; the executor reports its pid on fd 3 and waits, the shim passes it on as a first reply,
        # {"held": pid}
        hold = bool(message.get("hold"))
        if overlay is None:
            self._create_container(reply, hold)
            return
        target, options, cwd = overlay

        def mounted(result: CommandResult) -> None:
            if not result.ok:
                self._create_failed(reply, ShimError("Internal", f"{self.config.id}: mounting the rootfs overlay "
                                                     f"on {target} failed ({result.describe()})"))
                return
            self.rootfs_mounted = target
            self._create_container(reply, hold)

        argv = ["mount", "-t", "overlay", "overlay", "-o", options, target]
        if cwd:
            argv = ["/bin/sh", "-c", 'cd "$0" && exec "$@"', cwd, *argv]
        run_command(self.loop, argv, mounted, timeout=STEP_TIMEOUT)

    def _rootfs_path(self) -> str:
        root = self.spec.get("root") or {}
        path = root.get("path", "rootfs") if isinstance(root, dict) else "rootfs"
        return os.path.normpath(os.path.join(self.bundle, str(path)))

    def _overlay_options(self) -> tuple[str, str, str] | None:
        """(mount point, mount options, cwd for the mount command or '') for the overlay annotation."""
        annotations = self.spec.get("annotations") or {}
        raw = annotations.get(OVERLAY_ANNOTATION) if isinstance(annotations, dict) else None
        if not raw:
            return None
        try:
            overlay = json.loads(raw)
            lowers = [str(p) for p in overlay["lowerdirs"]]
            upper = str(overlay.get("upperdir") or "")
            work = str(overlay.get("workdir") or "")
        except (ValueError, KeyError, TypeError) as exc:
            raise ShimError("InvalidArgument", f"{self.config.id}: bad {OVERLAY_ANNOTATION} annotation: {exc}") \
                from None
        paths = [*lowers, upper, work]
        if not lowers or any(p and (not os.path.isabs(p) or "," in p or ":" in p) for p in paths):
            raise ShimError("InvalidArgument", f"{self.config.id}: {OVERLAY_ANNOTATION} needs absolute lower, "
                            "upper and work dirs without ',' or ':'")
        if bool(upper) != bool(work):
            raise ShimError("InvalidArgument", f"{self.config.id}: {OVERLAY_ANNOTATION}: upperdir and workdir go "
                            "together")
        target = self._rootfs_path()
        os.makedirs(target, exist_ok=True)
        rest = f",upperdir={upper},workdir={work}" if upper else ""
        options = "lowerdir=" + ":".join(lowers) + rest
        if len(options) < MOUNT_DATA_MAX:
            return target, options, ""
        # mount(2) takes one page of options: many layers are named relative to their common parent, which the
        # mount command gets as its cwd (overlayfs resolves the paths when mounting)
        base = os.path.commonpath(lowers)
        options = "lowerdir=" + ":".join(os.path.relpath(p, base) for p in lowers) + rest
        if len(options) >= MOUNT_DATA_MAX:
            raise ShimError("InvalidArgument", f"{self.config.id}: {len(lowers)} layers are too many for one "
                            "overlay mount")
        return target, options, base

    def _create_container(self, reply: Reply, hold: bool = False) -> None:
        process = self.spec.get("process") or {}
        tty = bool(process.get("terminal")) if isinstance(process, dict) else False
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        child_fds = [devnull]
        console: socket.socket | None = None
        args = ["create", "--bundle", self.bundle, "--pid-file", self.path("init.pid")]
        held_w: int | None = None
        if hold:
            held_r, held_w = os.pipe2(os.O_CLOEXEC)
            child_fds.append(held_w)
            args += ["--held-pid-fd", "3"]
            self._relay_held_pid(held_r, reply)
        stdio = (devnull, devnull, devnull)
        try:
            if tty:
                console = pty.console_listener("console.sock")
                args += ["--console-socket", "console.sock"]
            else:
                out_r, out_w = _pipe()
                err_r, err_w = _pipe()
                child_fds += [out_w, err_w]
                self.outputs = [Output(self, out_r, STDOUT, protocol.STREAM_STDOUT),
                                Output(self, err_r, STDERR, protocol.STREAM_STDERR)]
                stdin_fd = devnull
                if self.config.stdin:
                    in_r, in_w = os.pipe2(os.O_CLOEXEC)
                    child_fds.append(in_r)
                    self.stdin = Sink(self.loop, in_w)
                    stdin_fd = in_r
                stdio = (stdin_fd, out_w, err_w)
            args.append(self.config.id)
            self.oom_before = self._oom_kills() or 0
            self.parent_oom_before = self._oom_kills(parent=True) or 0
            since = time.monotonic()

            def created(result: CommandResult, offset: int) -> None:
                if console is not None:
                    self._await_console(console, result, offset, since, reply)
                else:
                    self._created(result, offset, since, reply)

            self.run_executor(args, created, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2], fd3=held_w)
        except OSError as exc:
            if console is not None:
                console.close()
            self._create_failed(reply, ShimError("Internal", f"{self.config.id}: cannot run the executor: {exc}"))
        finally:
            for fd in child_fds:
                os.close(fd)

    def _relay_held_pid(self, fd: int, reply: Reply) -> None:
        """The executor's line on the held-pid pipe ("<pid>\n") becomes the first reply of a held create."""
        os.set_blocking(fd, False)
        data = bytearray()

        def on_readable() -> None:
            chunk = read_available(fd)
            if chunk is None:
                return
            data.extend(chunk)
            if chunk and b"\n" not in data:
                return
            self.loop.forget(fd)
            os.close(fd)
            text = bytes(data).strip()
            if text.isdigit():
                reply(protocol.reply_ok(held=int(text)))
            # else the executor ended without one: its failure is the create's reply

        self.loop.add_reader(fd, on_readable)

    def _await_console(self, console: socket.socket, result: CommandResult, offset: int, since: float,
                       reply: Reply) -> None:
        def finish(master: int, error: str) -> None:
            self.loop.forget(console.fileno())
            console.close()
            try:
                os.unlink(self.path("console.sock"))
            except FileNotFoundError:
                pass
            if master >= 0:
                self.master = master
                self.outputs = [Output(self, os.dup(master), STDOUT, protocol.STREAM_STDOUT)]
                os.set_inheritable(self.master, False)
                self.stdin = Sink(self.loop, master, owns_fd=True)
            if error and result.ok:
                self._create_failed(reply, ShimError("Internal", f"{self.config.id}: {error}"))
                return
            self._created(result, offset, since, reply)

        if not result.ok:
            finish(-1, "")
            return
        timer = 0

        def on_console() -> None:
            try:
                master = pty.receive_master(console)
            except OSError as exc:
                self.loop.cancel(timer)
                finish(-1, f"no pty master from the executor: {exc}")
                return
            if master is None:
                return
            self.loop.cancel(timer)
            finish(master, "")

        timer = self.loop.call_later(CONSOLE_TIMEOUT, lambda: finish(-1, "the executor sent no pty master"))
        self.loop.add_reader(console.fileno(), on_console)
        on_console()

    def _created(self, result: CommandResult, offset: int, since: float, reply: Reply) -> None:
        if not result.ok:
            message = self.executor_error(result, offset)
            self._create_failed(reply, ShimError("Internal", f"{self.config.id}: {message}"))
            return
        try:
            with open(self.path("init.pid")) as f:
                self.pid = int(f.read().strip())
        except (OSError, ValueError) as exc:
            self._create_failed(reply, ShimError("Internal", f"{self.config.id}: no pid file from the executor: "
                                                 f"{exc}"))
            return
        self.state = "created"
        # the init is our child now (we are its subreaper); its exit is claimed even if it already happened
        self.loop.watch_child(self.pid, self._on_init_exit, since=since)
        log(f"container {self.config.id} created, init pid {self.pid}")
        reply(protocol.reply_ok(pid=self.pid))

    def _create_failed(self, reply: Reply, error: ShimError) -> None:
        log(f"create failed: {error.message}")

        def undone() -> None:
            reply(protocol.reply_error(error.kind, error.message))
            # nothing to watch: the shim goes once the answer is out
            self._exit_when_flushed()

        self._undo_create(undone)

    def _undo_create(self, done: Callable[[], None]) -> None:
        def deleted(_: CommandResult, __: int) -> None:
            self._unmount(done)

        for out in self.outputs:
            out.close()
        self.outputs = []
        if self.stdin is not None:
            self.stdin.close()
            self.stdin = None
        self.run_executor(["delete", "--force", self.config.id], deleted)

    def _unmount(self, done: Callable[[], None]) -> None:
        target = self.rootfs_mounted
        if not target:
            done()
            return

        def unmounted(result: CommandResult) -> None:
            if result.ok:
                self.rootfs_mounted = ""
                done()
                return
            log(f"umount {target} failed ({result.describe()}); detaching it lazily")

            def lazy(result: CommandResult) -> None:
                if not result.ok:
                    log(f"umount -l {target} failed too ({result.describe()})")
                self.rootfs_mounted = ""
                done()
            run_command(self.loop, ["umount", "-l", target], lazy, timeout=STEP_TIMEOUT)

        run_command(self.loop, ["umount", target], unmounted, timeout=STEP_TIMEOUT)

    def _exit_when_flushed(self) -> None:
        """Stop the loop once every reply is out (a client that does not read gets two seconds)."""
        deadline = time.monotonic() + 2.0

        def check() -> None:
            if time.monotonic() > deadline or all(c.closed or c.backlog == 0 for c in self.conns):
                self.loop.stop()
            else:
                self.loop.call_later(0.01, check)
        self.loop.call_later(0, check)

    # --- start, state, kill, wait ---------------------------------------------------------------------------

    def op_start(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        if self.state == "stopped" and self.started_at == 0:
            raise ShimError("FailedPrecondition", f"container {self.config.id} exited before it was started "
                            f"(exit code {self.status.exit_code if self.status else '?'})")
        if self.state != "created":
            raise ShimError("FailedPrecondition", f"container {self.config.id} is {self.state}, not created")
        self.state = "starting"
        self.started_at = time.time_ns()

        def started(result: CommandResult, offset: int) -> None:
            if self.state == "starting":
                if result.ok:
                    self.state = "running"
                else:
                    self.state = "created"
                    self.started_at = 0
            if result.ok or self.status is not None:
                # an init that exited before `start` returned was started all the same
                log(f"container {self.config.id} started")
                reply(protocol.reply_ok(pid=self.pid, started_at=self.started_at))
            else:
                reply(protocol.reply_error("Internal", f"{self.config.id}: {self.executor_error(result, offset)}"))

        self.run_executor(["start", self.config.id], started)

    def _state_json(self) -> dict[str, Any]:
        state = "running" if self.state == "starting" else self.state
        body: dict[str, Any] = {"id": self.config.id, "state": state, "pid": self.pid,
                                "started_at": self.started_at, "shim_pid": os.getpid()}
        if self.status is not None:
            body["status"] = self.status.to_json()
        return body

    def op_state(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        reply(protocol.reply_ok(**self._state_json()))

    def op_kill(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        sig = message.get("signal", signal.SIGTERM)
        if not isinstance(sig, int) or not 0 < sig < signal.NSIG:
            raise ShimError("InvalidArgument", f"bad signal {sig!r}")
        if self.state in ("new", "creating"):
            raise ShimError("FailedPrecondition", f"container {self.config.id} is not created yet")
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
                reply(protocol.reply_error("Internal", f"{self.config.id}: {self.executor_error(result, offset)}"))

        self.run_executor(["kill", "--all", self.config.id, str(sig)], killed)

    def op_wait(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        if self.state in ("new", "creating"):
            raise ShimError("FailedPrecondition", f"container {self.config.id} is not created yet")
        if self.status is not None:
            reply(protocol.reply_ok(status=self.status.to_json()))
        else:
            self.waiters.append(reply)

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

    # --- output and exit ------------------------------------------------------------------------------------

    def on_output(self, output: Output, data: bytes) -> None:
        self.log.write(output.stream, data)
        if not self.attachers:
            return
        for conn, attacher in list(self.attachers.items()):
            if output.stream_id in attacher.streams:
                conn.send_frame(output.stream_id, data)
                if conn.backlog > protocol.MAX_ATTACH_BACKLOG:
                    log(f"dropping an attach session that fell {conn.backlog} bytes behind")
                    conn.close()

    def _oom_kills(self, parent: bool = False) -> int | None:
        """oom_kill of the container's memory.events (or its parent's: hierarchical); None when unreadable."""
        cgroup = self._cgroup_dir()
        if not cgroup:
            return 0
        if parent:
            cgroup = os.path.dirname(cgroup)
        try:
            with open(os.path.join(cgroup, "memory.events")) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            return None
        return 0

    def _oom_killed(self, sig: int) -> bool:
        """Whether the kernel's OOM killer killed the container. A systemd scope is gone as soon as it is empty
        (the systemd cgroup driver): then a SIGKILL while its parent (the pod's slice, which counts its children's
        OOM kills) counted one more is taken as this container's."""
        count = self._oom_kills()
        if count is not None:
            return count > self.oom_before
        parent = self._oom_kills(parent=True)
        return sig == signal.SIGKILL and parent is not None and parent > self.parent_oom_before

    def _cgroup_dir(self) -> str:
        linux = self.spec.get("linux") or {}
        path = linux.get("cgroupsPath", "") if isinstance(linux, dict) else ""
        if self.config.cgroup:  # the path as crispd computed it (the systemd form of cgroupsPath is not a path)
            path = self.config.cgroup
        if not self.config.cgroup2_mount or not isinstance(path, str) or not path.startswith("/"):
            return ""
        return os.path.join(self.config.cgroup2_mount, path.lstrip("/"))

    def _on_init_exit(self, wait_status: int) -> None:
        finished = time.time_ns()
        for out in self.outputs:
            out.drain()
        code, sig = protocol.wait_status_to_exit(wait_status)
        oom = self._oom_killed(sig)
        self.status = ExitStatus(exit_code=code, signal=sig, started_at=self.started_at,
                                 finished_at=finished, oom_killed=oom)
        try:
            protocol.write_status_file(self.path(protocol.STATUS_NAME), self.config.id, self.pid, self.status)
        except OSError as exc:
            log(f"cannot write the status file: {exc}")
        self.state = "stopped"
        log(f"container {self.config.id} exited: code {code}" + (f" (signal {sig})" if sig else "") +
            (" oom-killed" if oom else ""))
        for reply in self.waiters:
            reply(protocol.reply_ok(status=self.status.to_json()))
        self.waiters.clear()
        for conn in list(self.attachers):
            conn.send_frame(protocol.STREAM_EXIT, json.dumps(self.status.to_json()).encode())
            conn.close_after_flush()
        self.attachers.clear()
        if self.stdin is not None:
            self.stdin.close()
            self.stdin = None

    # --- attach and resize ----------------------------------------------------------------------------------

    def op_attach(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        if self.state not in ("created", "starting", "running"):
            raise ShimError("FailedPrecondition", f"container {self.config.id} is {self.state}: cannot attach")
        want_stdin = bool(message.get("stdin"))
        if want_stdin and (self.stdin is None or not self.config.stdin):
            raise ShimError("FailedPrecondition", f"container {self.config.id} has no stdin to attach to")
        attacher = Attacher(self, conn, want_stdin, bool(message.get("stdout", True)),
                            bool(message.get("stderr", True)))
        reply(protocol.reply_ok(tty=self.master >= 0))
        conn.framed = True
        self.attachers[conn] = attacher

        def on_frame(stream: int, payload: bytes) -> None:
            if stream == protocol.STREAM_STDIN and attacher.stdin:
                if not payload:
                    attacher.stdin = False
                    self._stdin_session_ended()
                elif self.stdin is not None:
                    self.stdin.write(payload)
                    if self.stdin.paused:
                        self._pause_stdin_sources()
            elif stream == protocol.STREAM_RESIZE:
                self._resize_from_frame(self.master, payload)

        conn.on_frame = on_frame

    def _pause_stdin_sources(self) -> None:
        sink = self.stdin
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
        if self.config.stdin_once and self.stdin is not None and self.master < 0:
            # stdin_once: the container sees EOF when the first attach session that wrote to it ends
            self.stdin.close()
            self.stdin = None

    def _resize_from_frame(self, fd: int, payload: bytes) -> None:
        try:
            size = json.loads(payload)
            pty.set_window_size(fd, int(size["width"]), int(size["height"]))
        except (ValueError, KeyError, TypeError, OSError) as exc:
            log(f"ignoring a bad resize request: {exc}")

    def op_resize(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        width, height = message.get("width"), message.get("height")
        if not isinstance(width, int) or not isinstance(height, int) or not (0 <= width < 65536) or \
                not (0 <= height < 65536):
            raise ShimError("InvalidArgument", f"bad window size {width!r}x{height!r}")
        exec_id = message.get("exec_id") or ""
        if exec_id:
            session = self.execs.get(exec_id)
            if session is None or session.done:
                raise ShimError("NotFound", f"{self.config.id}: no running exec {exec_id!r}")
            fd = session.master
        else:
            fd = self.master
        if fd < 0:
            raise ShimError("FailedPrecondition", f"{self.config.id}: {'exec ' + exec_id if exec_id else 'container'}"
                            " has no terminal")
        try:
            pty.set_window_size(fd, width, height)
        except OSError as exc:
            raise ShimError("Internal", f"{self.config.id}: resize failed: {exc.strerror}") from None
        reply(protocol.reply_ok())

    # --- exec -----------------------------------------------------------------------------------------------

    def op_exec(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        if self.state not in ("running", "starting"):
            raise ShimError("FailedPrecondition", f"container {self.config.id} is {self.state}, not running")
        args = message.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            raise ShimError("InvalidArgument", f"{self.config.id}: exec needs a non-empty list of arguments")
        env = message.get("env") or []
        if not isinstance(env, list) or not all(isinstance(e, str) and "=" in e for e in env):
            raise ShimError("InvalidArgument", f"{self.config.id}: exec env must be a list of NAME=value")
        tty = bool(message.get("tty"))
        timeout = message.get("timeout") or 0
        if not isinstance(timeout, int | float) or timeout < 0:
            raise ShimError("InvalidArgument", f"bad exec timeout {timeout!r}")
        self._exec_seq += 1
        session = ExecSession(self, conn, f"exec{self._exec_seq}", tty, float(timeout))
        process = self._exec_process(args, env, tty, message)
        spec_path = self.path(f"{session.id}.json")
        pid_path = self.path(f"{session.id}.pid")
        session.files = [spec_path, pid_path]
        protocol.write_file_atomic(spec_path, json.dumps(process).encode(), 0o600)

        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        child_fds = [devnull]
        console: socket.socket | None = None
        argv = ["exec", "--detach", "--process", spec_path, "--pid-file", pid_path]
        stdio = (devnull, devnull, devnull)
        try:
            if tty:
                console_name = f"{session.id}.sock"
                console = pty.console_listener(console_name)
                session.files.append(self.path(console_name))
                argv += ["--console-socket", console_name]
            else:
                out_r, out_w = _pipe()
                err_r, err_w = _pipe()
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

            def launched(result: CommandResult, offset: int) -> None:
                if console is not None:
                    self._exec_console(session, console, result, offset, since, reply)
                else:
                    self._exec_launched(session, result, offset, since, reply)

            self.execs[session.id] = session
            self.run_executor([*argv, self.config.id], launched, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2])
        except OSError as exc:
            self.execs.pop(session.id, None)
            if console is not None:
                console.close()
            self._exec_cleanup(session)
            raise ShimError("Internal", f"{self.config.id}: cannot run the executor for exec: {exc}") from None
        finally:
            for fd in child_fds:
                os.close(fd)

    def _exec_process(self, args: list[str], env: list[str], tty: bool, message: dict[str, Any]) -> dict[str, Any]:
        """The container's own process spec (user, capabilities, no_new_privs, rlimits, apparmor, ...) with the
        exec's args, env and terminal: the exec runs with the container's identity."""
        base = self.spec.get("process") or {}
        process = dict(base) if isinstance(base, dict) else {}
        process["args"] = args
        merged: dict[str, str] = {}
        for entry in [*process.get("env", []), *env]:
            name, _, value = str(entry).partition("=")
            merged[name] = value
        process["env"] = [f"{k}={v}" for k, v in merged.items()]
        process["terminal"] = tty
        process.pop("consoleSize", None)
        width, height = message.get("width"), message.get("height")
        if tty and isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
            process["consoleSize"] = {"width": width, "height": height}
        if isinstance(message.get("cwd"), str) and message["cwd"]:
            process["cwd"] = message["cwd"]
        return process

    def _exec_console(self, session: ExecSession, console: socket.socket, result: CommandResult, offset: int,
                      since: float, reply: Reply) -> None:
        def finish(master: int, error: str) -> None:
            self.loop.forget(console.fileno())
            console.close()
            if master >= 0:
                session.master = master
                reader = os.dup(master)
                os.set_blocking(reader, False)
                session.outputs[reader] = protocol.STREAM_STDOUT
                session.stdin = Sink(self.loop, master, owns_fd=True)
            if error and result.ok:
                self._exec_failed(session, reply, error)
                return
            self._exec_launched(session, result, offset, since, reply)

        if not result.ok:
            finish(-1, "")
            return
        timer = 0

        def on_console() -> None:
            try:
                master = pty.receive_master(console)
            except OSError as exc:
                self.loop.cancel(timer)
                finish(-1, f"no pty master from the executor: {exc}")
                return
            if master is not None:
                self.loop.cancel(timer)
                finish(master, "")

        timer = self.loop.call_later(CONSOLE_TIMEOUT, lambda: finish(-1, "the executor sent no pty master"))
        self.loop.add_reader(console.fileno(), on_console)
        on_console()

    def _exec_failed(self, session: ExecSession, reply: Reply, message: str) -> None:
        session.done = True
        self.execs.pop(session.id, None)
        self._exec_cleanup(session)
        reply(protocol.reply_error("Internal", f"{self.config.id}: {message}"))

    def _exec_launched(self, session: ExecSession, result: CommandResult, offset: int, since: float,
                       reply: Reply) -> None:
        if not result.ok:
            self._exec_failed(session, reply, self.executor_error(result, offset))
            return
        try:
            with open(session.files[1]) as f:
                session.pid = int(f.read().strip())
        except (OSError, ValueError) as exc:
            self._exec_failed(session, reply, f"no pid file from the executor: {exc}")
            return
        conn = session.conn
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
                self._resize_from_frame(session.master, payload)

        conn.on_frame = on_frame
        for fd in session.outputs:
            self.loop.add_reader(fd, self._exec_reader(session, fd))
        conn.on_flushed = lambda: self._exec_resume_outputs(session)
        self.loop.watch_child(session.pid, lambda status: self._exec_exited(session, status), since=since)
        if session.timeout > 0:
            session.timers.append(self.loop.call_later(session.timeout, lambda: self._exec_timeout(session)))
        if conn.closed:  # the client gave up while the exec was being set up
            self._kill_exec(session)

    def _exec_reader(self, session: ExecSession, fd: int) -> Callable[[], None]:
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
                    self._exec_output_closed(session, fd)
                    return
                session.conn.send_frame(stream, data)
        return on_readable

    def _exec_resume_outputs(self, session: ExecSession) -> None:
        for fd in session.outputs:
            self.loop.add_reader(fd, self._exec_reader(session, fd))

    def _exec_output_closed(self, session: ExecSession, fd: int) -> None:
        self.loop.forget(fd)
        os.close(fd)
        del session.outputs[fd]
        self._exec_maybe_done(session)

    def _exec_exited(self, session: ExecSession, status: int) -> None:
        session.status = status
        session.finished_at = time.time_ns()
        # the pipes may be held open by processes the exec left behind: they get a grace period, then are cut
        session.timers.append(self.loop.call_later(EXEC_OUTPUT_GRACE, lambda: self._exec_cut_outputs(session)))
        if session.master >= 0:
            # a pty gives EIO once every slave fd is closed; read what is there now
            for fd in list(session.outputs):
                self._exec_reader(session, fd)()
        self._exec_maybe_done(session)

    def _exec_cut_outputs(self, session: ExecSession) -> None:
        for fd in list(session.outputs):
            self._exec_reader(session, fd)()
            if fd in session.outputs:
                self._exec_output_closed(session, fd)

    def _exec_maybe_done(self, session: ExecSession) -> None:
        if session.done or session.status is None or session.outputs:
            return
        session.done = True
        for timer in session.timers:
            self.loop.cancel(timer)
        code, sig = protocol.wait_status_to_exit(session.status)
        result = {"exit_code": code, "signal": sig, "started_at": session.started_at,
                  "finished_at": session.finished_at, "timed_out": session.timed_out}
        session.conn.send_frame(protocol.STREAM_EXIT, json.dumps(result).encode())
        session.conn.close_after_flush()
        self.execs.pop(session.id, None)
        self._exec_cleanup(session)

    def _exec_cleanup(self, session: ExecSession) -> None:
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

    def _exec_timeout(self, session: ExecSession) -> None:
        if session.status is None:
            log(f"exec {session.id} in {self.config.id} timed out after {session.timeout}s: killing it")
            session.timed_out = True
            self._kill_exec(session)

    def _kill_exec(self, session: ExecSession) -> None:
        """SIGKILL the exec's process and every process below it."""
        if not session.pid or session.status is not None:
            return
        for pid in [*_descendants(session.pid), session.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # --- shutdown -------------------------------------------------------------------------------------------

    def op_shutdown(self, conn: Conn, message: dict[str, Any], reply: Reply) -> None:
        force = bool(message.get("force"))
        if self.state == "new":
            reply(protocol.reply_ok())
            self._exit_when_flushed()
            return
        if self.state in ("creating", "starting"):
            raise ShimError("FailedPrecondition", f"container {self.config.id} is {self.state}; try again")
        if self.status is None and not force:
            raise ShimError("FailedPrecondition", f"container {self.config.id} is {self.state}: stop it first "
                            "(or shut down with force)")
        self._shutdown_replies.append(reply)
        if self._shutting_down:
            return
        self._shutting_down = True
        if self.status is None:
            log(f"shutdown with force: killing container {self.config.id}")
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.run_executor(["kill", "--all", self.config.id, "KILL"], lambda result, offset: None)
            self.waiters.append(lambda answer: self._delete_and_exit())
        else:
            self._delete_and_exit()

    def _delete_and_exit(self) -> None:
        def deleted(result: CommandResult, offset: int) -> None:
            if not result.ok:
                log(self.executor_error(result, offset))
            self._unmount(finished)

        def finished() -> None:
            for out in self.outputs:
                out.close()
            self.log.close()
            for name in (protocol.SOCKET_NAME, protocol.INFO_NAME, "init.pid"):
                try:
                    os.unlink(self.path(name))
                except FileNotFoundError:
                    pass
            log(f"container {self.config.id} deleted; shim exits")
            for reply in self._shutdown_replies:
                reply(protocol.reply_ok())
            self._exit_when_flushed()

        self.run_executor(["delete", "--force", self.config.id], deleted)

    def run(self) -> None:
        self.loop.run()


def _descendants(pid: int) -> list[int]:
    """Every process below pid, deepest last, from /proc/<pid>/task/<tid>/children."""
    found: list[int] = []
    queue = [pid]
    while queue:
        current = queue.pop()
        try:
            tids = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            queue.extend(children)
    return found
