"""A process's start time, the one reader crispd, the shim and the executor share (pid reuse is told by it)."""

from __future__ import annotations

import os
import subprocess

from runtime.procs import ProcessRef, parent_pid, process_start_time


def test_start_time_names_a_live_process_and_not_its_zombie() -> None:
    own = process_start_time(os.getpid())
    assert isinstance(own, int) and own > 0
    assert process_start_time(os.getpid()) == own
    child = subprocess.Popen(["true"])
    try:
        # exited but not reaped: a zombie has no start time any more (it is not running)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert process_start_time(child.pid) is None
    finally:
        child.wait()
    assert process_start_time(child.pid) is None


def test_process_ref_tells_a_reused_pid() -> None:
    ref = ProcessRef.of(os.getpid())
    assert ref is not None and ref.alive()
    assert not ProcessRef(os.getpid(), ref.start_time + 1).alive()


def test_parent_pid() -> None:
    child = subprocess.Popen(["sleep", "10"])
    try:
        assert parent_pid(child.pid) == os.getpid()
        assert parent_pid(os.getpid()) == os.getppid()
    finally:
        child.kill()
        child.wait()
    assert parent_pid(child.pid) is None
