"""What a test left on the host: mounts under a dir, cgroups under a base, processes mentioning a path."""

from __future__ import annotations

import os
import time
from collections.abc import Collection
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


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline.strip()}")
    return found


def processes_using(prefix: Path, exclude: Collection[int] = ()) -> list[str]:
    """Processes with an open file or their working dir under prefix (shims hold their logs there; a pod init
    its log), other than this one and `exclude`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid() or int(pid) in exclude:
            continue
        try:
            links = [os.readlink(f"/proc/{pid}/cwd")]
            links += [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        held = [link for link in links if link == str(prefix) or link.startswith(f"{prefix}/")]
        if held:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{pid}: {cmdline.strip()} holds {held[0]}")
    return found


def children_of(pid: int) -> set[int]:
    """The pids whose parent is pid."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
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
