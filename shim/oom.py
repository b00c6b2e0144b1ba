"""OOM kills: the count in the container cgroup's memory.events, read when the init starts and when it exits."""

from __future__ import annotations

import os


def oom_kills(cgroup_dir: str) -> int:
    """memory.events' oom_kill of the cgroup (0 when it is unknown: no cgroup, no memory controller)."""
    if not cgroup_dir:
        return 0
    try:
        with open(os.path.join(cgroup_dir, "memory.events")) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0
