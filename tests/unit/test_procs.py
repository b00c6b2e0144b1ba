"""A process's start time, the one reader crispd, the shim and the executor share (pid reuse is told by it), and
the process title crisp's long-lived processes give themselves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from runtime.procs import ProcessRef, package_root, process_start_time


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


TITLE_SCRIPT = """
import os, sys
sys.path.insert(0, sys.argv[1])
from runtime.procs import set_process_title
set_process_title("crisp-test", os.environ["TITLE_ARG"])
print(os.environ["PROBE"], flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("arg", ["c0ffee", "x" * 3000], ids=["fits", "spills-into-environ"])  # argv: ~400 bytes
def test_a_process_names_itself_in_place(arg: str) -> None:
    """comm and the command line as ps reads them; a title longer than the argument area goes on into the
    environment area; the process's own environment (Python's copy) is untouched."""
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", TITLE_SCRIPT, package_root()], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env={"PROBE": "kept", "TITLE_ARG": arg, "PAD": "y" * 4000})
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"kept\n"
        assert open(f"/proc/{proc.pid}/comm").read() == "crisp-test\n"
        assert open(f"/proc/{proc.pid}/cmdline", "rb").read() == f"crisp-test {arg}\0".encode()
        shown = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(proc.pid)], capture_output=True,
                               text=True).stdout
        assert shown.strip() == f"crisp-test {arg}"
    finally:
        proc.kill()
        proc.wait()
