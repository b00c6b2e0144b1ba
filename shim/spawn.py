"""Starting programs from the shim: posix_spawn (no fork of the shim's memory), signals reset to their defaults;
and crisp's own executor, which is not started at all: its code is imported already (the zygote imported it), so a
command of it runs in a fork of the shim (`fork_call`), never in a new interpreter.

`run_command` runs a short command (the executor's create/start/kill/delete, mount, umount) without blocking the
loop and calls back with its exit code and output.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence

from runtime.procs import set_process_title
from shim.loop import Loop, read_available

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# the shim ignores some signals; its children start with every disposition at the default
_RESET_SIGNALS = tuple(s for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGXCPU, signal.SIGINT, signal.SIGTERM,
                                   signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD))


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def spawn(argv: Sequence[str], stdin: int, stdout: int, stderr: int, env: dict[str, str] | None = None,
          fd3: int | None = None) -> int:
    """Start argv with the given fds as 0, 1, 2 (and `fd3` as 3; each must be >= 4 or already that number);
    returns the pid.

    Every other fd of the shim is close-on-exec (Python's default), so nothing else leaks into the child.
    """
    actions = []
    if fd3 == 3:
        os.set_inheritable(3, True)  # no dup2 to clear its close-on-exec
    for target, fd in ((0, stdin), (1, stdout), (2, stderr), *(((3, fd3),) if fd3 is not None else ())):
        if fd != target:
            actions.append((os.POSIX_SPAWN_DUP2, fd, target))
    return os.posix_spawnp(argv[0], list(argv), env if env is not None else child_env(), file_actions=actions,
                           setsigdef=_RESET_SIGNALS, setsigmask=())


# the body of a command run in a fork of the shim: its arguments (without the program) -> its exit status
Entry = Callable[[list[str]], int]


class Resident:
    """A program whose code the shim has imported: `main(arguments)` runs in a fork of the shim, named `name`."""

    __slots__ = ("main", "name", "skip")

    def __init__(self, main: Entry, name: str, skip: int) -> None:
        self.main = main
        self.name = name
        self.skip = skip  # how many words of an argv name the program (the rest are its arguments)


def fork_call(program: Resident, argv: Sequence[str], stdin: int, stdout: int, stderr: int,
              fd3: int | None = None) -> int:
    """Run `program.main(argv[program.skip:])` in a fork of the shim, set up as `spawn` sets up a program (fds 0-2
    and 3, every other fd closed, signals at their defaults and unblocked, PATH set); returns the pid. The child's
    title is the program's name and its arguments, never the shim's."""
    pid = os.fork()
    if pid != 0:
        return pid
    code = 1
    entry, skip = program.main, program.skip
    try:
        _become_command(program.name, list(argv[skip:]), stdin, stdout, stderr, fd3)
        code = entry(list(argv[skip:]))
    except SystemExit as exc:  # argparse's way out
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(code)


def leave_shim(stdin: int, stdout: int, stderr: int, fd3: int | None = None) -> None:
    """First thing in a fork of the shim that will run something else: no garbage collection (it would only copy
    the shim's pages), the shim's signal handling undone (its wakeup fd, its handlers and ignored signals, its
    mask), the given fds as 0-2 (and 3)."""
    gc.disable()
    signal.set_wakeup_fd(-1)
    for signum in _RESET_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    for target, fd in ((0, stdin), (1, stdout), (2, stderr), *(((3, fd3),) if fd3 is not None else ())):
        if fd != target:
            os.dup2(fd, target)
        else:
            os.set_inheritable(fd, True)


def _become_command(name: str, args: list[str], stdin: int, stdout: int, stderr: int, fd3: int | None) -> None:
    """In a fresh fork of the shim: drop everything of the shim a command must not have (its loop's fds and signal
    handling, its logging, its title), keep what a spawned program gets."""
    leave_shim(stdin, stdout, stderr, fd3)
    os.closerange(4 if fd3 is not None else 3, os.sysconf("SC_OPEN_MAX"))
    # the shim's Python-level streams and buffers stay behind (os._exit never flushes them); fresh ones on 1 and 2
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False, buffering=1)
    sys.stderr = open(2, "w", closefd=False, buffering=1)
    logging.root.handlers.clear()
    os.environ.setdefault("PATH", DEFAULT_PATH)
    try:
        set_process_title(name, *args)
    except OSError:
        pass


class CommandResult:
    __slots__ = ("argv", "elapsed", "returncode", "signal", "stderr", "stdout")

    def __init__(self, argv: Sequence[str], returncode: int, sig: int, stdout: bytes, stderr: bytes,
                 elapsed: float) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.signal = sig
        self.stdout = stdout
        self.stderr = stderr
        self.elapsed = elapsed

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.signal == 0

    def describe(self) -> str:
        text = self.stderr.decode(errors="replace").strip() or self.stdout.decode(errors="replace").strip()
        how = f"killed by signal {self.signal}" if self.signal else f"exit status {self.returncode}"
        last = text.splitlines()[-1] if text else ""
        return f"{how}: {last}" if last else how


class _Command:
    """One running command: its pipes, its exit status, and the callback once both are done."""

    def __init__(self, loop: Loop, argv: Sequence[str], done: Callable[[CommandResult], None],
                 capture_stdout: bool, capture_stderr: bool) -> None:
        self.loop = loop
        self.argv = list(argv)
        self.done = done
        self.status: int | None = None
        self.timer = 0
        self.started = time.monotonic()
        self.out = bytearray()
        self.err = bytearray()
        self.open: dict[int, bytearray] = {}
        self.capture = (capture_stdout, capture_stderr)

    def reader(self, fd: int) -> Callable[[], None]:
        buf = self.open[fd]

        def on_readable() -> None:
            while True:
                data = read_available(fd)
                if data is None:
                    return
                if not data:
                    self.loop.forget(fd)
                    os.close(fd)
                    del self.open[fd]
                    self.finish()
                    return
                if len(buf) < 1 << 20:  # a command that talks this much is cut
                    buf.extend(data)
        return on_readable

    def exited(self, status: int) -> None:
        self.status = status
        self.finish()

    def finish(self) -> None:
        if self.status is None or self.open:
            return
        if self.timer:
            self.loop.cancel(self.timer)
        sig = os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else 0
        code = os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else 128 + sig
        self.done(CommandResult(self.argv, code, sig, bytes(self.out), bytes(self.err),
                                time.monotonic() - self.started))


def run_command(loop: Loop, argv: Sequence[str], done: Callable[[CommandResult], None],
                stdin: int | None = None, stdout: int | None = None, stderr: int | None = None,
                timeout: float = 0.0, env: dict[str, str] | None = None, fd3: int | None = None,
                resident: Resident | None = None) -> int:
    """Run argv without blocking the loop; `done` gets the result once it exited and its pipes are drained.

    stdin defaults to /dev/null, stdout and stderr to pipes that are collected. A timeout (> 0) SIGKILLs it. A
    `resident` program runs in a fork of the shim (`fork_call`).
    """
    cmd = _Command(loop, argv, done, stdout is None, stderr is None)
    to_close: list[int] = []
    read_ends: list[int] = []
    try:
        if stdin is None:
            stdin = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            to_close.append(stdin)
        targets: list[int] = []
        for given, buf in ((stdout, cmd.out), (stderr, cmd.err)):
            if given is None:
                r, w = os.pipe2(os.O_CLOEXEC)
                os.set_blocking(r, False)
                read_ends.append(r)
                to_close.append(w)
                cmd.open[r] = buf
                targets.append(w)
            else:
                targets.append(given)
        if resident is not None:
            pid = fork_call(resident, argv, stdin, targets[0], targets[1], fd3)
        else:
            pid = spawn(argv, stdin, targets[0], targets[1], env, fd3)
    except OSError:
        for fd in read_ends:
            os.close(fd)
        raise
    finally:
        for fd in to_close:
            os.close(fd)
    for fd in read_ends:
        loop.add_reader(fd, cmd.reader(fd))
    loop.watch_child(pid, cmd.exited)
    if timeout > 0:
        def kill() -> None:
            if cmd.status is None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        cmd.timer = loop.call_later(timeout, kill)
    return pid
