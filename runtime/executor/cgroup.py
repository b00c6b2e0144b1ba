"""The executor's only contact with cgroups (through `runtime.cgroups`, imported on use: `start` and `state`
never need it): make the container's cgroup with its limits and device filter, change its limits (`update`), put
processes in it, signal and remove it.

Every limit in the spec is required (crispd dropped beforehand what its config lets it drop): a missing
controller fails `create`. The device filter is always installed, runc's default allow list included.

With `--systemd-cgroup` (crisp's systemd driver) the cgroup is the scope `<slice>:crisp:<id>` names, and crispd makes
it (the executor never speaks D-Bus): `create` reports stage 1's pid on `--held-pid-fd` before letting it go, the
shim passes it to crispd, crispd starts the scope with it, writes the limits and marks the scope as crisp's, last;
`create` waits for that, installs the device filter and goes on. The executor itself never enters the scope (its
memory would count against the container's). Nothing is removed here (stopping the unit does).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from runtime import errors

if TYPE_CHECKING:
    from runtime.cgroups import Cgroup

SCOPE_TIMEOUT = 60.0


class ContainerCgroup(Protocol):
    @property
    def path(self) -> str: ...

    def add_process(self, pid: int) -> None: ...

    def open_for_new_process(self) -> int: ...

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


def systemd_scope(path: str) -> Cgroup:
    """`--systemd-cgroup`: the container's scope (`slice:prefix:name`), which crispd is yet to make."""
    from runtime.cgroups import CgroupV2Manager, paths

    return CgroupV2Manager.discover().cgroup(paths.from_oci(path))


def hand_over(cg: Cgroup, pid: int, held_fd: int, resources: Mapping[str, Any],
              timeout: float = SCOPE_TIMEOUT) -> None:
    """`--systemd-cgroup`: report the container's first process (stage 1, which has done nothing yet) on
    `held_fd`, wait until crispd has started the scope with it and finished the scope (marked it as crisp's, last),
    then install the device filter. crispd kills the process when it cannot make the scope."""
    from runtime.cgroups import rules_from_oci
    from runtime.procs import process_start_time

    start = process_start_time(pid)
    try:
        os.write(held_fd, f"{pid}\n".encode())
    finally:
        os.close(held_fd)
    deadline = time.monotonic() + timeout
    while True:
        if process_start_time(pid) != start:
            raise errors.CrispError("the container's process was killed while it waited for its scope "
                                    "(crispd could not make it)")
        if _cgroup_of(pid) == cg.path and cg.created_by_crisp():
            break
        if time.monotonic() > deadline:
            raise errors.DeadlineExceeded(f"no scope {cg.path} within {timeout:.0f}s (with --systemd-cgroup crispd "
                                          "makes it)")
        time.sleep(0.01)
    cg.set_device_filter(rules_from_oci(resources.get("devices") or []))


def _cgroup_of(pid: int) -> str:
    """A process's cgroup v2 path (the "0::" line of /proc/<pid>/cgroup); "" when it is gone."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return ""


def open_cgroup(path: str) -> ContainerCgroup | None:
    from runtime.cgroups import CgroupV2Manager, paths

    cg = CgroupV2Manager.discover().cgroup(paths.from_oci(path))
    return cg if cg.exists() else None
