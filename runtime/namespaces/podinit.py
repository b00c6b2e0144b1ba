"""PID 1 of a pod that shares its PID namespace: reaps orphans, exits on SIGTERM/SIGINT.

Started by `start_pod_init` as `setsid -f unshare --pid=<pin> --fork --kill-child -- python -I -S <this file> FD`:
detached from crispd, in a new session, PID 1 of a new PID namespace pinned at <pin>. It writes its pid as the host
sees it (from the host's /proc) to fd FD to say it is ready. Standard library only and race-free: the signals it
waits for are blocked and taken with sigwaitinfo, so a child exit between two reaps is never missed.
"""

from __future__ import annotations

import os
import signal
import sys

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}


def reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: list[str]) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    ready_fd = int(argv[0])
    host_pid = os.readlink("/proc/self")  # /proc is the host's mount: this is our pid out there
    os.write(ready_fd, f"{host_pid}\n".encode())
    os.close(ready_fd)
    os.chdir("/")
    while True:
        reap_children()
        info = signal.sigwaitinfo(_SIGNALS)
        if info.si_signo in (signal.SIGTERM, signal.SIGINT):
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
