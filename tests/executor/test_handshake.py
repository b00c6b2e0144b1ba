"""The handshake's two readers with real processes: launcher.launch (blocking: `crisp-executor create`/`exec`) and
the shim's loop (shim/exec_launch.py's _Handshake, an exec the shim starts itself). Both follow
launcher.Handshake's rules (tests/unit/test_handshake.py): the same steps, the same errors, the same processes
killed on a failure. The children here are plain forks (no namespaces): stage 1 is launcher's own, the child runs
the function given, as the container's init or an exec's process would, and ends by exec'ing `true`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from runtime import errors
from runtime.executor import launcher, protocol
from runtime.linux import syscalls as sc
from shim import exec_launch
from shim.loop import Loop
from shim.protocol import ShimError

TRUE = "/usr/bin/true" if os.path.exists("/usr/bin/true") else "/bin/true"


def _ready_then_exec(sock: socket.socket) -> None:
    protocol.send(sock, protocol.Ready())
    os.execv(TRUE, [TRUE])


def _hooks_then_exec(sock: socket.socket) -> None:
    """The container's init with runtime hooks (runtime/executor/init.py): RunHooks, wait for HooksDone."""
    protocol.send(sock, protocol.RunHooks())
    if not isinstance(protocol.receive(sock), protocol.HooksDone):
        os._exit(1)
    _ready_then_exec(sock)


def _fails(sock: socket.socket) -> None:
    raise errors.NotFound("no such program here")  # launcher._child sends it as a Failure


def _dies(sock: socket.socket) -> None:
    os._exit(3)


class _Stage1Hangs(sc.Syscalls):
    """Stage 1 stops for good right after Go (as in a setns or a mount that hangs, or a frozen cgroup)."""

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        if option == sc.PR_SET_DUMPABLE:
            while True:
                signal.pause()
        return super().prctl(option, arg2, arg3, arg4, arg5)


class _StillWaiting(Exception):
    pass


@pytest.fixture
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A handshake that is stuck fails after 3 s instead of a minute (stage 1 and the shim's timer read it)."""
    monkeypatch.setattr(launcher, "HANDSHAKE_TIMEOUT", 3.0)


@pytest.fixture
def stage1s(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The pids of the stage 1s launcher.start forks; any left (a test that failed) is killed and reaped."""
    pids: list[int] = []
    real_start = launcher.start

    def start(*args: Any, **kwargs: Any) -> launcher.Started:
        started = real_start(*args, **kwargs)
        pids.append(started.pid)
        return started

    monkeypatch.setattr(launcher, "start", start)
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


@contextlib.contextmanager
def _bounded(seconds: int) -> Iterator[None]:
    """A blocking wait that would never end (the bug this guards) ends the test with _StillWaiting instead."""
    def alarm(signum: int, frame: object) -> None:
        raise _StillWaiting(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    # a timer already set (the VM tier's per-test one, tests/vm/plugin.py) is set again afterwards
    remaining, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    began = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if remaining:
            signal.setitimer(signal.ITIMER_REAL, max(remaining - (time.monotonic() - began), 0.001), interval)


def _launch(child_main: Callable[[socket.socket], None], until_exec: bool, sys: sc.Syscalls | None = None,
            run_hooks: Callable[[int], None] | None = None) -> launcher.Launched:
    with _bounded(30):
        launched = launcher.launch(sys or sc.Syscalls(), launcher.NamespacePlan(), child_main, lambda pid: None,
                                   run_hooks=run_hooks, until_exec=until_exec)
    launched.sock.close()
    return launched


def _through_the_shim(child_main: Callable[[socket.socket], None], stage1s: list[int],
                      sys: sc.Syscalls | None = None) -> tuple[int, ShimError | None, int]:
    """Start `child_main` as the shim starts an exec and read the handshake in a shim loop: (the pid or 0, the
    error, stage 1's wait status)."""
    loop = Loop()
    results: list[tuple[int, ShimError | None]] = []

    def done(pid: int, error: ShimError | None) -> None:
        results.append((pid, error))
        loop.stop()

    try:
        started = launcher.start(sys or sc.Syscalls(), launcher.NamespacePlan(), child_main)
        exec_launch._Handshake(loop, "c1", started, None, done).go()
        loop.call_later(30, loop.stop)  # a bound only: the handshake's own timer is shorter
        loop.run()
    finally:
        loop.selector.close()
        os.close(loop._wake_r)
        os.close(loop._wake_w)
    assert results, "the shim's handshake never finished"
    _, status = os.waitpid(stage1s[-1], 0)  # (the loop reaps only with its SIGCHLD handler, not installed here)
    return *results[0], status


# ------------------------------------------------------------------------------------------------ RunHooks


@pytest.mark.parametrize("until_exec", [False, True], ids=["create", "exec"])
def test_launch_runs_the_hooks_for_the_child_then_lets_it_go(until_exec: bool, stage1s: list[int]) -> None:
    asked: list[int] = []
    launched = _launch(_hooks_then_exec, until_exec, run_hooks=asked.append)
    assert asked == [launched.pid] and launched.pid not in stage1s


def test_the_shim_lets_a_child_that_asks_for_hooks_go_on(short_timeout: None, stage1s: list[int]) -> None:
    """The shim's reader answered RunHooks with nothing: the child waited for HooksDone until the timeout."""
    pid, error, _ = _through_the_shim(_hooks_then_exec, stage1s)
    assert error is None and pid > 0 and pid not in stage1s


def test_the_shim_sees_the_exec(stage1s: list[int]) -> None:
    pid, error, status = _through_the_shim(_ready_then_exec, stage1s)
    assert error is None and pid > 0
    assert os.waitstatus_to_exitcode(status) == 0


# ------------------------------------------------------------------------------------------------ failures


@pytest.mark.parametrize("until_exec", [False, True], ids=["create", "exec"])
def test_launch_raises_the_childs_typed_failure(until_exec: bool, stage1s: list[int]) -> None:
    with pytest.raises(errors.NotFound, match="no such program here"):
        _launch(_fails, until_exec)


def test_the_shim_reports_the_childs_typed_failure(stage1s: list[int]) -> None:
    pid, error, _ = _through_the_shim(_fails, stage1s)
    assert pid == 0 and error is not None
    assert (error.kind, error.message) == ("NotFound", "c1: no such program here")


@pytest.mark.parametrize("until_exec", [False, True], ids=["create", "exec"])
def test_launch_reports_a_child_that_died_without_a_word(until_exec: bool, stage1s: list[int]) -> None:
    with pytest.raises(errors.CrispError) as caught:
        _launch(_dies, until_exec)
    assert type(caught.value) is errors.CrispError and str(caught.value) == launcher.DIED


def test_the_shim_reports_a_child_that_died_without_a_word(stage1s: list[int]) -> None:
    pid, error, _ = _through_the_shim(_dies, stage1s)
    assert pid == 0 and error is not None
    assert (error.kind, error.message) == ("Internal", f"c1: {launcher.DIED}")


def test_launch_kills_a_stage1_that_hangs(short_timeout: None, stage1s: list[int]) -> None:
    """On a failure launch kills stage 1 too, and only then waits for it; it used to kill only the child (its pid
    not known yet here) and wait for stage 1 for good."""
    with pytest.raises(errors.DeadlineExceeded, match=launcher.TIMED_OUT):
        _launch(_ready_then_exec, until_exec=True, sys=_Stage1Hangs())
    with pytest.raises(ChildProcessError):
        os.waitpid(stage1s[0], os.WNOHANG)  # killed and reaped by launch


def test_the_shim_kills_a_stage1_that_hangs(short_timeout: None, stage1s: list[int]) -> None:
    pid, error, status = _through_the_shim(_ready_then_exec, stage1s, sys=_Stage1Hangs())
    assert pid == 0 and error is not None
    assert (error.kind, error.message) == ("DeadlineExceeded", f"c1: {launcher.TIMED_OUT}")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_launch_kills_both_when_a_hook_fails(stage1s: list[int]) -> None:
    """A hook that fails (here: run_hooks raises) fails the launch; the child, waiting for HooksDone, is killed."""
    pids: list[int] = []

    def failing_hook(pid: int) -> None:
        pids.append(pid)
        raise errors.FailedPrecondition("the prestart hook failed")

    with pytest.raises(errors.FailedPrecondition):
        _launch(_hooks_then_exec, until_exec=False, run_hooks=failing_hook)
    assert len(pids) == 1
    with pytest.raises(ProcessLookupError):
        # re-parented to an ancestor once stage 1 exited, which may not have reaped it yet: gone or a zombie
        _wait_gone(pids[0])


def _wait_gone(pid: int) -> None:
    """Raises ProcessLookupError once pid is gone or dead (a zombie); its /proc entry says which."""
    with _bounded(30):
        while True:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().rpartition(")")[2].split()[0]
            except FileNotFoundError:
                raise ProcessLookupError(pid) from None
            if state in ("Z", "X"):
                raise ProcessLookupError(pid)
            time.sleep(0.01)
