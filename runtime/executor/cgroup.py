"""The executor's only contact with cgroups (through `runtime.cgroups`, imported on use: `start` and `state`
never need it): make the container's cgroup with its limits and device filter, change its limits (`update`), put
processes in it, signal and remove it.

Every limit in the spec is required (crispd dropped beforehand what its config lets it drop): a missing
controller fails `create`. The device filter is always installed, runc's default allow list included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Protocol


class ContainerCgroup(Protocol):
    @property
    def path(self) -> str: ...

    def add_process(self, pid: int) -> None: ...

    def apply(self, resources: Mapping[str, Any]) -> None: ...

    def procs(self) -> list[int]: ...

    def kill(self, timeout: float = 5.0) -> None: ...

    def remove(self, timeout: float = 5.0) -> None: ...


def default_path(container_id: str) -> str:
    """Where a container goes when its spec names no cgroupsPath."""
    return f"/crisp-{container_id}"


def create_cgroup(path: str, resources: Mapping[str, Any]) -> tuple[ContainerCgroup, bool]:
    """Make (or reuse) the container's cgroup and apply limits and device filter; (cgroup, made by us).
    A failure removes what this call made."""
    from runtime.cgroups import CgroupV2Manager, paths, rules_from_oci

    manager = CgroupV2Manager.discover()
    cg_path = paths.from_oci(path)
    existed = manager.cgroup(cg_path).exists()
    cg = manager.create(cg_path, exist_ok=True)
    with contextlib.ExitStack() as undo:
        if not existed:
            undo.callback(cg.remove)
        cg.apply(resources)
        cg.set_device_filter(rules_from_oci(resources.get("devices") or []))
        undo.pop_all()
    return cg, not existed


def open_cgroup(path: str) -> ContainerCgroup | None:
    from runtime.cgroups import CgroupV2Manager, paths

    cg = CgroupV2Manager.discover().cgroup(paths.from_oci(path))
    return cg if cg.exists() else None
