"""An exec with the resident executor, started by the shim itself: no executor command in between.

The executor's own code prepares it (runtime.executor.container.Executor.prepare_exec: the container runs, its
namespaces and cgroup, the process's identity, capabilities and seccomp) and forks its stage 1
(runtime.executor.launcher.start), exactly as `crisp-executor exec` does. What differs is who waits: the shim reads
the handshake in its loop instead of blocking a command on it, so one exec costs two forks of the shim (stage 1,
which joins the container's namespaces, and the process it forks) instead of three, and no command's start-up, pid
file or exit. The process becomes the shim's child (its subreaper) once stage 1 exits, as before.

A process that hangs before its exec (a cwd on a hung file system) holds up nothing but its own exec: the shim's
loop goes on, and after the handshake timeout the exec fails and what was started is killed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.executor import console, launcher, protocol
from runtime.executor.container import Executor
from runtime.executor.oci import parse_process
from shim.loop import Loop
from shim.protocol import ShimError
from shim.spawn import leave_shim

# (the exec'd process's pid, or 0 with the error that stopped it)
Started = Callable[[int, ShimError | None], None]


def start_exec(loop: Loop, root: str, container_id: str, process: dict[str, Any], stdio: tuple[int, int, int],
               console_socket: str | None, done: Started) -> None:
    """Start `process` in the container; `done` is called once it exec'd (or failed). Raises ShimError if it
    cannot even be forked (the container is not running, a bad process, ...)."""
    try:
        parsed = parse_process(process, "process.json")
        console_sock = console.connect_console_socket(console_socket) if console_socket else None
        executor = Executor(Path(root))
        prepared = executor.prepare_exec(container_id, parsed, console_sock)
    except errors.CrispError as exc:
        raise ShimError(errors.kind_of(exc), f"{container_id}: {exc}") from None

    def in_stage1() -> None:
        leave_shim(*stdio)
        logging.root.handlers.clear()  # the shim's: nothing of the exec logs into the shim's log

    try:
        try:
            started = launcher.start(executor.sys, prepared.plan, prepared.child_main, cgroup_fd=prepared.cgroup_fd,
                                     in_stage1=in_stage1)
        finally:
            prepared.close()
    except (OSError, errors.CrispError) as exc:
        raise ShimError(errors.kind_of(exc) if isinstance(exc, errors.CrispError) else errors.INTERNAL,
                        f"{container_id}: cannot start the exec: {exc}") from None
    _Handshake(loop, container_id, started, prepared.cgroup, done).go()


class _Handshake:
    """launcher.launch's reading of the handshake (launcher.Handshake's rules, until the process exec'd), done in
    the shim's loop: a message at a time as the socket is readable, with one timer for the whole handshake."""

    def __init__(self, loop: Loop, container_id: str, started: launcher.Started, cgroup: Any,
                 done: Started) -> None:
        self.loop = loop
        self.id = container_id
        self.started = started
        self.cgroup = cgroup
        self.done: Started | None = done
        self.handshake = launcher.Handshake(started.pid, until_exec=True)
        self.timer = 0
        loop.watch_child(started.pid, lambda status: None)  # stage 1's own exit is nobody's concern

    def go(self) -> None:
        sock = self.started.sock
        try:
            if not self.started.placed and self.cgroup is not None:
                self.cgroup.add_process(self.started.pid)
            protocol.send(sock, protocol.Go())
        except (OSError, errors.CrispError) as exc:
            self._fail(exc)
            return
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._readable)
        self.timer = self.loop.call_later(launcher.HANDSHAKE_TIMEOUT, self._timed_out)

    def _readable(self) -> None:
        while self.done is not None:
            try:
                message = protocol.receive(self.started.sock)
            except BlockingIOError:
                return
            except (OSError, errors.CrispError) as exc:
                self._fail(exc)
                return
            step = self.handshake.feed(message)
            if isinstance(step, launcher.RunHooksFor):
                # the runtime's hooks are the container's create's, none an exec's: the process may go on
                try:
                    protocol.send(self.started.sock, protocol.HooksDone())
                except OSError as exc:
                    self._fail(exc)
                    return
            elif isinstance(step, launcher.Done):
                self._finish(step.pid, None)
            elif isinstance(step, launcher.Failed):
                self._fail(step.error)

    def _timed_out(self) -> None:
        self.timer = 0
        self._fail(self.handshake.timed_out().error)

    def _fail(self, exc: BaseException) -> None:
        if self.done is None:
            return
        self.handshake.kill()
        if self.handshake.pid:
            self.loop.watch_child(self.handshake.pid, lambda status: None)  # reaped once it is ours
        self._finish(0, ShimError(errors.kind_of(exc), f"{self.id}: {exc}"))

    def _finish(self, pid: int, error: ShimError | None) -> None:
        done, self.done = self.done, None
        if done is None:
            return
        if self.timer:
            self.loop.cancel(self.timer)
        self.loop.forget(self.started.sock.fileno())
        self.started.sock.close()
        done(pid, error)
