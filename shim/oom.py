"""OOM kills: the count in the container cgroup's memory.events, read when the init starts and when it exits.

Under the systemd cgroup driver the container's cgroup is a scope, which systemd removes as soon as it is empty:
its memory.events may be gone by the time the shim reads it. Then the parent's count (the pod's slice, whose
memory.events counts its children's OOM kills) stands in for it: a SIGKILL while the parent counted one more is
taken as this container's.
"""

from __future__ import annotations

import os
import signal


def oom_kills(cgroup_dir: str) -> int | None:
    """memory.events' oom_kill of the cgroup: 0 when there is no cgroup to look at, None when it cannot be read
    (the cgroup is gone, or has no memory controller)."""
    if not cgroup_dir:
        return 0
    try:
        with open(os.path.join(cgroup_dir, "memory.events")) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        return None
    return 0


class OomCounter:
    """The OOM kill counts of a container's cgroup and of its parent, taken before the init starts."""

    def __init__(self) -> None:
        self.cgroup_dir = ""
        self.before = 0
        self.parent_before = 0

    def start(self, cgroup_dir: str) -> None:
        self.cgroup_dir = cgroup_dir
        self.before = oom_kills(cgroup_dir) or 0
        self.parent_before = (oom_kills(os.path.dirname(cgroup_dir)) or 0) if cgroup_dir else 0

    def killed(self, sig: int) -> bool:
        """Whether the kernel's OOM killer killed the container (its init died of `sig`)."""
        count = oom_kills(self.cgroup_dir)
        if count is not None:
            return count > self.before
        parent = oom_kills(os.path.dirname(self.cgroup_dir))
        return sig == signal.SIGKILL and parent is not None and parent > self.parent_before
