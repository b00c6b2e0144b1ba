"""Forking a process into a container's namespaces and cgroup, with the typed handshake of protocol.py.

    executor (host) --fork--> stage 1 --fork--> init (or exec'd process)
stage 1 waits until the executor has put it into the container's cgroup (Go), makes itself non-dumpable, joins
the namespaces given by path (setns), unshares the new ones, then forks: only a child enters a new (or joined)
PID namespace. stage 1 sends that child's pid (as the host sees it) and exits, so the child is re-parented to the
nearest child subreaper (the shim), as runc's init is. The executor is a short-lived program of its own (never
crispd), so forking here is fine; it is single-threaded, which setns(CLONE_NEWNS) requires.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from runtime import errors
from runtime.executor import protocol
from runtime.linux import syscalls as sc

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 60.0

NS_FLAGS = {
    "pid": sc.CLONE_NEWPID, "network": sc.CLONE_NEWNET, "mount": sc.CLONE_NEWNS, "ipc": sc.CLONE_NEWIPC,
    "uts": sc.CLONE_NEWUTS, "cgroup": sc.CLONE_NEWCGROUP, "user": sc.CLONE_NEWUSER,
}
PROC_NS_NAMES = {"pid": "pid", "network": "net", "mount": "mnt", "ipc": "ipc", "uts": "uts", "cgroup": "cgroup",
                 "user": "user"}
# joined in this order: the user namespace first (the others are owned by it, and joining it gives the
# capabilities to join them), the mount namespace last, since joining it changes our root and cwd
JOIN_ORDER = ("user", "cgroup", "ipc", "uts", "network", "pid", "mount")


@dataclass
class NamespacePlan:
    """Namespaces to join (fds opened by the executor before forking) and the flags of those to create.

    `before_userns`, with a user namespace to join: stage 1 first unshares a mount namespace of its own (owned by
    the host's user namespace) and calls it there, to mount what only the host's root may (id-mapped mounts, the
    rootfs overlay); the container's mount namespace is then made inside the user namespace, as a copy of it."""

    join: list[tuple[str, int]] = field(default_factory=list)
    unshare_flags: int = 0
    before_userns: Callable[[], None] | None = None

    def close(self) -> None:
        for _, fd in self.join:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.join = []


def open_namespace(ns_type: str, path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise errors.NotFound(f"{ns_type} namespace {path}: {exc.strerror}") from None


def plan_namespaces(spec_namespaces: list[tuple[str, str]]) -> NamespacePlan:
    """From (type, path) pairs: a path means join it, no path means a new one."""
    plan = NamespacePlan()
    try:
        by_type = dict(spec_namespaces)
        for ns_type in JOIN_ORDER:
            if ns_type not in by_type:
                continue
            path = by_type[ns_type]
            if path:
                plan.join.append((ns_type, open_namespace(ns_type, path)))
            else:
                plan.unshare_flags |= NS_FLAGS[ns_type]
    except BaseException:
        plan.close()
        raise
    return plan


def report_failure(sock: socket.socket, exc: BaseException) -> None:
    """Send a typed error to the executor; an unexpected exception carries its traceback's last line."""
    if isinstance(exc, errors.CrispError):
        message = str(exc)
    elif isinstance(exc, OSError):
        message = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    else:
        message = f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(OSError):
        protocol.send(sock, protocol.Failure(errors.kind_of(exc), message))


def _stage1(sock: socket.socket, sys: sc.Syscalls, plan: NamespacePlan,
            child_main: Callable[[socket.socket], None]) -> NoReturn:
    code = 1
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT)
        message = protocol.receive(sock)
        if not isinstance(message, protocol.Go):
            os._exit(1)  # the executor went away
        sock.settimeout(None)
        # from here on no process in the container may ptrace us or open our /proc files
        sys.prctl(sc.PR_SET_DUMPABLE, 0)
        if plan.before_userns is not None and any(ns_type == "user" for ns_type, _ in plan.join):
            sys.unshare(sc.CLONE_NEWNS)
            plan.before_userns()
        for ns_type, fd in plan.join:
            try:
                sys.setns(fd, NS_FLAGS[ns_type])
            except OSError as exc:
                raise errors.InvalidArgument(f"cannot join the {ns_type} namespace: {exc.strerror}") from None
        if plan.unshare_flags:
            sys.unshare(plan.unshare_flags)
        plan.close()
        pid = os.fork()
        if pid == 0:
            _child(sock, child_main)
        protocol.send(sock, protocol.ChildPid(pid))
        code = 0
    except BaseException as exc:
        report_failure(sock, exc)
    finally:
        os._exit(code)


def _child(sock: socket.socket, child_main: Callable[[socket.socket], None]) -> NoReturn:
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        child_main(sock)
        raise errors.CrispError("the container process returned instead of exec'ing")  # a bug
    except BaseException as exc:
        report_failure(sock, exc)
    finally:
        os._exit(127)


# ---------------------------------------------------------------- the parent's side of the handshake, its rules

DIED = "the container process died during setup without saying why"
TIMED_OUT = "the container process did not get ready in time"


@dataclass(frozen=True)
class KeepReading:
    """Nothing to do but read the next message."""


@dataclass(frozen=True)
class RunHooksFor:
    """The process (`pid`) asked for the runtime's hooks: run them, then send HooksDone, then read on."""

    pid: int


@dataclass(frozen=True)
class Done:
    """The process (`pid`) is Ready (and, `until_exec`, exec'd): the handshake is over."""

    pid: int


@dataclass(frozen=True)
class Failed:
    """The handshake failed with `error`: kill Handshake.to_kill, reap them, and report `error`."""

    error: Exception


Step = KeepReading | RunHooksFor | Done | Failed
KEEP_READING = KeepReading()


class Handshake:
    """What the parent does with each message of the handshake, whoever reads them: `launch` below (blocking) and
    the shim's loop (shim/exec_launch.py, non-blocking). Fed one message at a time, or None at end-of-file; says
    what to do next. It never reads or writes itself.

    Two processes write to one socket: stage 1 its child's pid (ChildPid, then it exits) and the child itself
    (RunHooks, Ready, or a Failure), so ChildPid may come before or after either of the child's. RunHooks waits
    for the pid (the hooks are given it). Ready with the pid is the end, unless `until_exec`: then the child
    execs after Ready, and end-of-file (the socket is close-on-exec) says it did; a Failure says it did not.
    End-of-file at any other point is a child that died without saying why.

    On a failure (a Failed step, or one of the caller's own: a timeout, a hook's, a socket's) both processes are
    killed, the child (if its pid is known) and stage 1: stage 1 may be the one that hangs (in a namespace's
    setns, a mount before it joins a user namespace, a frozen cgroup), and the caller waits for it."""

    def __init__(self, stage1: int, until_exec: bool = False) -> None:
        self.stage1 = stage1
        self.until_exec = until_exec
        self.pid = 0
        self.ready = False
        self.hooks_asked = False

    def feed(self, message: protocol.Message | None) -> Step:
        if message is None:
            if self.until_exec and self.ready and self.pid:
                return Done(self.pid)
            return Failed(errors.CrispError(DIED))
        if isinstance(message, protocol.Failure):
            return Failed(message.to_error())
        if isinstance(message, protocol.ChildPid):
            self.pid = message.pid
            if self.hooks_asked:
                self.hooks_asked = False
                return RunHooksFor(self.pid)
        elif isinstance(message, protocol.RunHooks):
            if not self.pid:
                self.hooks_asked = True
                return KEEP_READING
            return RunHooksFor(self.pid)
        elif isinstance(message, protocol.Ready):
            self.ready = True
        if self.ready and self.pid and not self.until_exec:
            return Done(self.pid)
        return KEEP_READING

    def timed_out(self) -> Failed:
        return Failed(errors.DeadlineExceeded(TIMED_OUT))

    @property
    def to_kill(self) -> tuple[int, ...]:
        """The processes a failed handshake kills: the child (once its pid is known) and stage 1."""
        return tuple(pid for pid in (self.pid, self.stage1) if pid)

    def kill(self) -> None:
        for pid in self.to_kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Launched:
    pid: int
    sock: socket.socket


@dataclass
class Started:
    """Stage 1 forked (`pid`) but not yet let go; `placed`: it was born in its cgroup; `sock`: the parent's end of
    the handshake."""

    pid: int
    sock: socket.socket
    placed: bool


def start(sys: sc.Syscalls, plan: NamespacePlan, child_main: Callable[[socket.socket], None],
          close_in_child: Sequence[int] = (), cgroup_fd: int | None = None,
          in_stage1: Callable[[], None] | None = None) -> Started:
    """Fork stage 1 (into the cgroup of `cgroup_fd` if the kernel lets us) and return without waiting: the caller
    puts it into its cgroup if it was not born there, sends Go and reads the handshake by Handshake's rules
    (`launch` does all that, blocking). `in_stage1` runs first thing in stage 1: a caller that is not a short-lived
    program of its own drops its own state there (its signal handling, its stdio). The plan's fds are closed here
    either way."""
    parent_sock, child_sock = protocol.socketpair()
    try:
        stage1, placed = sc.fork_born_in(cgroup_fd)
    except BaseException:
        parent_sock.close()
        child_sock.close()
        plan.close()
        raise
    if stage1 == 0:
        parent_sock.close()
        try:
            if in_stage1 is not None:
                in_stage1()
            for fd in close_in_child:
                os.close(fd)
        except BaseException as exc:
            report_failure(child_sock, exc)
            os._exit(1)
        _stage1(child_sock, sys, plan, child_main)
    child_sock.close()
    plan.close()
    return Started(stage1, parent_sock, placed)


def launch(sys: sc.Syscalls, plan: NamespacePlan, child_main: Callable[[socket.socket], None],
           add_to_cgroup: Callable[[int], None], close_in_child: Sequence[int] = (),
           run_hooks: Callable[[int], None] | None = None, cgroup_fd: int | None = None,
           until_exec: bool = False) -> Launched:
    """Fork stage 1, put it into the cgroup, let it go, and return the child's pid once it is Ready (`until_exec`:
    and has exec'd), reading the handshake by Handshake's rules.

    With `cgroup_fd` (its cgroup's directory) stage 1 is born there (sc.fork_into_cgroup), unless the kernel
    refuses: then, as without it, `add_to_cgroup(stage 1's pid)` moves it in. When the child asks (RunHooks),
    `run_hooks(child pid)` runs here before it may go on (HooksDone). Any failure (ours, a hook's, or a typed one
    from a child) kills the child and stage 1 (Handshake.to_kill), reaps stage 1, and raises; the child, once
    stage 1 is gone, is the caller's to reap (it is the nearest subreaper).
    """
    started = start(sys, plan, child_main, close_in_child, cgroup_fd)
    stage1, parent_sock = started.pid, started.sock
    handshake = Handshake(stage1, until_exec)
    try:
        parent_sock.settimeout(HANDSHAKE_TIMEOUT)
        if not started.placed:
            add_to_cgroup(stage1)
        protocol.send(parent_sock, protocol.Go())
        while True:
            try:
                message = protocol.receive(parent_sock)
            except TimeoutError:
                step: Step = handshake.timed_out()
            else:
                step = handshake.feed(message)
            if isinstance(step, Failed):
                raise step.error
            if isinstance(step, RunHooksFor):
                if run_hooks is not None:
                    run_hooks(step.pid)
                protocol.send(parent_sock, protocol.HooksDone())
            elif isinstance(step, Done):
                return Launched(step.pid, parent_sock)
    except BaseException:
        handshake.kill()
        parent_sock.close()
        raise
    finally:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(stage1, 0)
