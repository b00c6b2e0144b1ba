"""Processes crisp started and finds again: identified by pid plus start time (pid reuse), and named so that an
operator finds them too (`set_process_title`).

Standard library only: crispd, the shim, the pod init and the executor all read a process's start time here.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass


def _stat_fields(pid: int | str) -> list[bytes] | None:
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


COMM_MAX = 15  # bytes of a task's comm (TASK_COMM_LEN 16, with its NUL)


def set_process_title(comm: str, *args: str) -> str:
    """Name this process: its comm (what `ps -o comm`, `top` and `pgrep` show) and its command line (`ps`,
    `pgrep -f`) become `comm` and `comm args...`, e.g. `crisp-shim <container id>`. Returns the command line set.

    The comm is written through /proc/thread-self/comm, prctl(PR_SET_NAME)'s file (set_task_comm): no ctypes.
    The command line is rewritten in place in the process's own argument area, extended into the environment area
    right after it when it is longer (setproctitle's way): PR_SET_MM_ARG_START/END would move it, but need
    CAP_SYS_RESOURCE. The bytes go through /proc/self/mem, which a process may always write for itself. The
    argument area's last byte is left non-NUL, which tells the kernel to show the title up to its NUL (and no
    padding after it). Python keeps its own copies of argv and the environment; the C environment strings that
    are overwritten become empty or the title's tail, which only C code calling getenv would see.
    """
    with open("/proc/thread-self/comm", "wb") as f:
        f.write(comm.encode()[:COMM_MAX])
    fields = _stat_fields("self")
    assert fields is not None
    arg_start, arg_end, env_start, env_end = (int(f) for f in fields[45:49])  # fields 48-51
    room = (env_end if env_start == arg_end else arg_end) - arg_start
    title = " ".join((comm, *args)).encode()[:room - 1]
    data = title + b"\0"
    if len(data) < arg_end - arg_start:
        data += b"\0" * (arg_end - arg_start - len(data) - 1) + b" "
    fd = os.open("/proc/self/mem", os.O_RDWR | os.O_CLOEXEC)
    try:
        os.pwrite(fd, data, arg_start)
    finally:
        os.close(fd)
    return title.decode(errors="replace")


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


def package_root() -> str:
    """The directory that holds crisp's packages (runtime, shim, cri): helpers crisp starts with `python -I -S`
    (no site-packages, no script dir) import them from there."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def descendants(pid: int) -> list[int]:
    """Every process below pid, deepest last, from /proc/<pid>/task/<tid>/children."""
    found: list[int] = []
    queue = [pid]
    while queue:
        current = queue.pop()
        try:
            tids = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            queue.extend(children)
    return found
