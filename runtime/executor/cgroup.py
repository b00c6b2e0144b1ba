"""The executor's only contact with cgroups: make the container's cgroup (limits, device filter), put processes
in it, signal and remove it.

Until the cgroup v2 manager (`runtime.cgroups`) lands this uses a minimal stand-in that can only make, join and
remove a cgroup, and refuses any limit: an executor treats every limit in the spec as required.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from runtime import errors


class ContainerCgroup(Protocol):
    path: str

    def add_process(self, pid: int) -> None: ...

    def procs(self) -> list[int]: ...

    def kill(self) -> None: ...

    def remove(self) -> None: ...


def default_path(container_id: str) -> str:
    return f"/crisp-{container_id}"


def _cgroup2_mount() -> Path:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"]:
            return Path(left.split()[4].replace("\\040", " "))
    raise errors.FailedPrecondition("no cgroup2 filesystem is mounted (the executor needs cgroup v2)")


class _Cgroup:
    def __init__(self, path: str) -> None:
        self.path = "/" + path.strip("/")
        self.dir = _cgroup2_mount() / self.path.lstrip("/")

    def create(self) -> None:
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.dir.mkdir()
        except FileExistsError:
            raise errors.AlreadyExists(f"cgroup {self.path} already exists") from None

    def exists(self) -> bool:
        return (self.dir / "cgroup.procs").exists()

    def add_process(self, pid: int) -> None:
        (self.dir / "cgroup.procs").write_text(str(pid))

    def procs(self) -> list[int]:
        try:
            return [int(p) for p in (self.dir / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def kill(self) -> None:
        try:
            (self.dir / "cgroup.kill").write_text("1")
        except FileNotFoundError:
            for pid in self.procs():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        deadline = time.monotonic() + 5
        while True:
            try:
                self.dir.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise errors.FailedPrecondition(f"cannot remove cgroup {self.path}: {exc.strerror}") from None
                time.sleep(0.01)


def _limits(resources: Mapping[str, Any]) -> list[str]:
    return sorted(key for key, value in resources.items() if value not in (None, {}, []) and key != "devices")


def create_cgroup(path: str, resources: Mapping[str, Any]) -> ContainerCgroup:
    """Make the container's cgroup with its limits and device filter (nothing is left if this fails)."""
    limits = _limits(resources)
    if limits:
        raise errors.FailedPrecondition(
            f"linux.resources: {', '.join(limits)}: cgroup limits need the cgroup v2 manager (not built in yet)")
    cg = _Cgroup(path)
    cg.create()
    return cg


def open_cgroup(path: str) -> ContainerCgroup | None:
    cg = _Cgroup(path)
    return cg if cg.exists() else None
