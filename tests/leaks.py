"""What a test left on the host: mounts under a dir, cgroups under a base, processes mentioning a path."""

from __future__ import annotations

import os
import time
from pathlib import Path

from runtime.cgroups import CgroupV2Manager


def mounts_under(prefix: Path) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if target == str(prefix) or target.startswith(f"{prefix}/"):
                found.append(target)
    return found


def cgroups_under(base: str) -> list[str]:
    """Every cgroup dir below base (base itself not included)."""
    mount = CgroupV2Manager.discover().mount
    root = mount / base.lstrip("/")
    if not root.exists():
        return []
    return sorted(str(Path(d).relative_to(mount)) for d, _, _ in os.walk(root) if Path(d) != root)


def remove_cgroup_tree(base: str) -> None:
    """Test cleanup: rmdir base and everything below it, deepest first (only empty cgroups can go)."""
    mount = CgroupV2Manager.discover().mount
    root = mount / base.lstrip("/")
    if root.exists():
        for d, _, _ in sorted(os.walk(root), key=lambda w: -len(w[0])):
            try:
                os.rmdir(d)
            except OSError:
                pass


def _uses(pid: str, text: str) -> bool:
    """The process's working dir or one of its open files names `text` (crisp's processes name themselves, so
    their command lines no longer show the paths they work in)."""
    try:
        links = [os.readlink(f"/proc/{pid}/cwd")]
        links += [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return False
    return any(text in link for link in links)


def processes_mentioning(text: str) -> list[str]:
    """Processes whose command line, working dir or open files name `text` (e.g. a crispd's state dir)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline or _uses(pid, text):
            found.append(f"{pid}: {cmdline.strip()}")
    return found


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.02)
    return bool(callable(predicate) and predicate())


def shm_segments(size: int | None = None) -> set[int]:
    """The ids of the System V shared memory segments in this IPC namespace (of `size` bytes only, if given)."""
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return {int(fields[1]) for fields in (line.split() for line in lines) if size is None or int(fields[3]) == size}
