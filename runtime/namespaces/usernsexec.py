"""Run a program inside a pod's user namespace with every capability of it, as the host's root.

`python -I -m runtime.namespaces.usernsexec USERNS -- PROGRAM ARGS...`: joins the user namespace pinned at USERNS
and raises all of its capabilities as ambient ones, so that they survive the exec: the program (util-linux
`nsenter`/`unshare`, the pod's helpers) can then make and enter namespaces owned by it. `nsenter --user` would make
the program the namespace's root instead, a host uid that may not even reach the interpreter's files; keeping the
host's root ids (which the namespace does not map) avoids that. Used for the pod's setup and its shared-PID init.
"""

from __future__ import annotations

import os
import sys

from runtime.linux import syscalls as sc

CAP_LAST = 63


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m runtime.namespaces.usernsexec USERNS -- PROGRAM ARGS...", file=sys.stderr)
        return 2
    fd = os.open(argv[0], os.O_RDONLY | os.O_CLOEXEC)
    sc.setns(fd, sc.CLONE_NEWUSER)
    os.close(fd)
    _, permitted, _ = sc.capget()
    sc.capset(permitted, permitted, permitted)
    for cap in range(CAP_LAST + 1):
        if permitted >> cap & 1:
            sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_RAISE, cap)
    os.execvp(argv[2], argv[2:])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
