"""Join a pod's user namespace with every capability of it, as the host's root (`enter_user_namespace`).

All of its capabilities are raised as ambient ones, so that they survive an exec: a shared-PID pod's init
(forked.py) makes its PID namespace owned by the pod's user namespace, and its PID 1 keeps them as before.
`nsenter --user` would make the process the namespace's root instead, a host uid that may not even reach the
program's files; keeping the host's root ids (which the namespace does not map) avoids that.
"""

from __future__ import annotations

import os

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

