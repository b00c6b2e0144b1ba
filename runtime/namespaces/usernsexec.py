"""Run a program inside a pod's user namespace with every capability of it, as the host's root.

`python -I -m runtime.namespaces.usernsexec USERNS -- PROGRAM ARGS...`: joins the user namespace pinned at USERNS
and raises all of its capabilities as ambient ones, so that they survive the exec: the program (util-linux
`nsenter`/`unshare`, the pod's helpers) can then make and enter namespaces owned by it. `nsenter --user` would make
the program the namespace's root instead, a host uid that may not even reach the interpreter's files; keeping the
host's root ids (which the namespace does not map) avoids that. Used for the pod's setup; its shared-PID init
(forked.py) joins the same way without an exec of this program.
"""

from __future__ import annotations

import os
import sys

from runtime.linux import syscalls as sc

CAP_LAST = 63


def enter_user_namespace(userns: str) -> None:
    """Join the user namespace pinned at `userns` with every capability of it, kept across exec (ambient). Only a
    single-threaded process may (setns(2)'s rule): a helper, or a process the zygote forked (`forked.py`)."""
    fd = os.open(userns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(fd, sc.CLONE_NEWUSER)
    finally:
        os.close(fd)
    _, permitted, _ = sc.capget()
    sc.capset(permitted, permitted, permitted)
    for cap in range(CAP_LAST + 1):
        if permitted >> cap & 1:
            sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_RAISE, cap)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m runtime.namespaces.usernsexec USERNS -- PROGRAM ARGS...", file=sys.stderr)
        return 2
    enter_user_namespace(argv[0])
    os.execvp(argv[2], argv[2:])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
