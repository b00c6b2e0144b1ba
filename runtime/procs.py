"""Processes crisp started and finds again after a restart: identified by pid plus start time (pid reuse)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name (field 2) may contain spaces and parentheses: split after its last ')'
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19])


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        start = proc_start_time(pid)
        return None if start is None else cls(pid, start)

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.start_time

    def signal(self, signum: int = signal.SIGKILL) -> bool:
        """Send signum if this very process is still there; False when it is gone."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            return False
        return True
