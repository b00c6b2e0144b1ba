"""PID 1 of a pod that shares its PID namespace: reaps orphans, exits on SIGTERM/SIGINT.

Started by `start_pod_init` as `setsid -f python -I -S -c <BOOTSTRAP> <package root> <pod id> FD`, detached from
crispd in a session of its own. That process makes a new PID namespace for its children (unshare(2)), forks the
pod's PID 1 into it, and once PID 1 has named itself (comm `crisp-podinit`, command line `crisp-podinit <pod id>`:
nothing in the pod shows a host path) writes PID 1's pid, as the host sees it, to fd FD and exits: PID 1 is the
only process left, and crispd pins its namespace. Race-free: the signals PID 1 waits for are blocked and taken with
sigwaitinfo, so a child exit between two reaps is never missed.
"""

from __future__ import annotations

import os
import signal
import sys

from runtime.linux import syscalls
from runtime.procs import set_process_title

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
NAME = "crisp-podinit"
# run as `python -I -S -c BOOTSTRAP <package root> <pod id> <fd>`: no site, no script dir, just crisp's packages
BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); from runtime.namespaces.podinit import main; "
             "sys.exit(main(sys.argv[2:]))")


def reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _pid1(pod_id: str, named_fd: int) -> int:
    try:
        set_process_title(NAME, pod_id)
    except OSError as exc:  # the pod still gets its PID 1
        print(f"cannot name the pod init {NAME}: {exc}", file=sys.stderr, flush=True)
    os.write(named_fd, b"\n")
    os.close(named_fd)
    os.chdir("/")
    while True:
        reap_children()
        info = signal.sigwaitinfo(_SIGNALS)
        if info.si_signo in (signal.SIGTERM, signal.SIGINT):
            return 0


def main(argv: list[str]) -> int:
    pod_id, ready_fd = argv[0], int(argv[1])
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # inherited by PID 1 before it could miss one
    syscalls.unshare(syscalls.CLONE_NEWPID)
    named_r, named_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_fd)
            os.close(named_r)
            code = _pid1(pod_id, named_w)
        finally:
            os._exit(code)
    os.close(named_w)
    if os.read(named_r, 1) != b"\n":
        print("the pod init exited before it was ready", file=sys.stderr)
        return 1
    os.write(ready_fd, f"{pid}\n".encode())
    return 0
