"""What a test left on the host: mounts under a dir, cgroups under a base, processes mentioning a path."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Collection
from pathlib import Path

from runtime.cgroups import CgroupV2Manager


def mounts_under(prefix: Path, pid: int | str = "self") -> list[str]:
    """The mounts at or below prefix, in the mount namespace of `pid` (by default this process's)."""
    found = []
    with open(f"/proc/{pid}/mountinfo") as f:
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


def kill_cgroup_tree(base: str) -> None:
    """A failed test's last resort: SIGKILL every process in base and below it (cgroup.kill)."""
    kill = CgroupV2Manager.discover().mount / base.lstrip("/") / "cgroup.kill"
    if kill.exists():
        with contextlib.suppress(OSError):
            kill.write_text("1")


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


async def await_until(predicate: Callable[[], bool], within: float = 10.0) -> bool:
    """`wait_until` for a test's event loop: the loop runs while it waits."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def cgroup_v1_dirs() -> set[str]:
    """Every cgroup dir of the host's cgroup v1 hierarchies ("<mount>/<path>"), except the siblings of the cgroups
    this process lives in: whoever put the test runner in a per-job v1 cgroup (a host's job manager) makes one for
    every other job there too, and nothing a test starts creates cgroups relative to its own."""
    found: set[str] = set()
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if line.split(" - ")[1].split()[0] == "cgroup"]
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(","):
            own[c.removeprefix("name=")] = path
    for mount in mounts:
        parent = str(Path(own.get(Path(mount).name, "/")).parent)
        skip = f"{mount}{parent}" if parent != "/" else ""
        for d, subdirs, _ in os.walk(mount):
            if skip and (d == skip or d.startswith(skip + "/")):
                subdirs.clear()
                continue
            found.add(d)
    return found


def store_rows(db: Path, ids: Collection[str]) -> list[str]:
    """The rows of a crispd's metadata store (`<root>/crisp.db`) that name any of these pod or container ids (read
    only, beside the running crispd)."""
    owner = {"sandboxes": "id", "containers": "id", "name_reservations": "owner_id", "ip_leases": "sandbox_id"}
    found = []
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        for table, column in owner.items():
            found += [f"{table} {value}" for (value,) in conn.execute(f"SELECT {column} FROM {table}")
                      if value in ids]
    return found


def shm_segments(size: int | None = None) -> set[int]:
    """The ids of the System V shared memory segments in this IPC namespace (of `size` bytes only, if given)."""
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return {int(fields[1]) for fields in (line.split() for line in lines) if size is None or int(fields[3]) == size}
