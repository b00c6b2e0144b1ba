"""Process counts of a cgroup subtree, for stats and metrics: processes, threads, open files and sockets.

Without the pids controller there is no pids.current: the processes are counted from each cgroup.procs of the
subtree (and threads from cgroup.threads). Open files and sockets come from /proc/<pid>/fd. Everything here
blocks on cgroupfs and procfs: call it from a worker thread. A process that exits while it is read is skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessCounts:
    processes: int
    threads: int
    file_descriptors: int | None  # open in the subtree's processes; None when not counted
    sockets: int | None


def _ids(path: Path) -> list[int]:
    try:
        text = path.read_text()
    except (FileNotFoundError, OSError):
        return []
    return [int(x) for x in text.split()]


def subtree_tasks(cgroup_dir: Path) -> tuple[list[int], int]:
    """The pids in the cgroup and every cgroup below it, and how many threads they have; ([], 0) when the cgroup
    does not exist."""
    pids: list[int] = []
    threads = 0
    for dirpath, _, _ in os.walk(cgroup_dir):
        base = Path(dirpath)
        pids += _ids(base / "cgroup.procs")
        threads += len(_ids(base / "cgroup.threads"))
    return pids, threads


def open_files(pids: list[int], proc: Path = Path("/proc")) -> tuple[int, int]:
    """(file descriptors, of which sockets) open in these processes."""
    fds = sockets = 0
    for pid in pids:
        fd_dir = proc / str(pid) / "fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(fd_dir / name)
            except OSError:
                continue
            fds += 1
            if target.startswith("socket:"):
                sockets += 1
    return fds, sockets


def count_processes(cgroup_dir: Path, with_files: bool = True) -> ProcessCounts | None:
    """None when the cgroup does not exist."""
    if not (cgroup_dir / "cgroup.procs").exists():
        return None
    pids, threads = subtree_tasks(cgroup_dir)
    if not with_files:
        return ProcessCounts(processes=len(pids), threads=threads, file_descriptors=None, sockets=None)
    fds, sockets = open_files(pids)
    return ProcessCounts(processes=len(pids), threads=threads, file_descriptors=fds, sockets=sockets)
