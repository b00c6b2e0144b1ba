"""Processes crisp started and finds again after a restart: identified by pid plus start time (pid reuse).

Standard library only: crispd, the shim and the executor all read a process's start time here.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat from field 3 (the state) on; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name (field 2) may contain spaces and parentheses: the fields start after its last ')'
    return data[data.rindex(b")") + 2:].split()


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot): with the pid it names one process for good.
    None when there is no such process, or only its zombie (it has exited)."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def parent_pid(pid: int) -> int | None:
    """Field 4 of /proc/<pid>/stat; None when there is no such process."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def processes_with_argument(argument: str) -> list[int]:
    """The pids whose command line has `argument` as one of its arguments (this process excluded)."""
    wanted = argument.encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                if wanted in f.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        start = process_start_time(pid)
        return None if start is None else cls(pid, start)

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time

    def signal(self, signum: int = signal.SIGKILL) -> bool:
        """Send signum if this very process is still there; False when it is gone."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            return False
        return True
