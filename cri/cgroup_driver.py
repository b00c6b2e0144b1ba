"""The cgroup driver crispd runs pods with (`[cgroup] driver`): where pod, pod-init and container cgroups go, who
makes and removes them, and how live limits reach them.

cgroupfs (the default): crisp makes plain directories (`runtime.cgroups`). systemd: every cgroup crisp makes is a
systemd unit that crispd starts over D-Bus (`runtime.systemd`; the shim and the executor never speak it):
- a pod without `cgroup_parent` gets the slice `crisp-pod<uid>.slice` under `crisp.slice`; the kubelet's pod slices
  are the kubelet's;
- a container of the built-in executor gets the scope `crisp-<id>.scope` in its pod's slice, started with the pid
  of its first process, which the executor reports (through the shim) before that process does anything, and which
  waits until the scope is ready (runtime/executor/cgroup.py); the limits go in as unit properties, then every limit
  is written to the scope's files (exact values, and what has no property) and the scope is marked as crisp's; runc
  and crun make their scope themselves (`--systemd-cgroup`, cgroupsPath `<slice>:crisp:<id>`);
- a pod's init gets the scope `crisp-<sandbox id>.scope`, started with its pid;
- each shim gets the scope `crisp-shim-<id>.scope` in system.slice: in crispd.service it would count against crispd's
  tasks and be reached by a stop of it (KillMode=process spares it, a `systemctl kill` would not); in a scope of its
  own, as CRI-O gives each conmon, `systemctl restart crispd` never touches a shim or a container;
- removal is StopUnit (which waits until the cgroup is gone) plus ResetFailedUnit; live updates are
  SetUnitProperties plus the files.
Every cgroupfs call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

from cri.config import CgroupConfig
from runtime import errors
from runtime.cgroups import CgroupV2Manager
from runtime.cgroups import paths as cgroup_paths
from runtime.systemd import Systemd, resource_properties, scope_properties, slice_properties

log = logging.getLogger(__name__)


class CgroupDriver:
    """cgroupfs or systemd, as the config says; `manager` raises FailedPrecondition when the host has no cgroup2."""

    def __init__(self, config: CgroupConfig, manager: Callable[[], CgroupV2Manager],
                 systemd: Systemd | None = None) -> None:
        self.config = config
        self.manager = manager
        self.systemd: Systemd | None = systemd if config.driver == "systemd" else None
        if config.driver == "systemd" and systemd is None:
            self.systemd = Systemd(bus=config.systemd_bus)

    @property
    def uses_systemd(self) -> bool:
        return self.systemd is not None

    def _bus(self) -> Systemd:
        if self.systemd is None:
            raise errors.FailedPrecondition("the cgroupfs driver makes no systemd units")
        return self.systemd

    # ---------------------------------------------------------------------------------------------- layout

    def pod_cgroup_path(self, cgroup_parent: str, pod_uid: str) -> str:
        if self.uses_systemd:
            return cgroup_paths.systemd_pod_cgroup_path(cgroup_parent, pod_uid)
        return cgroup_paths.pod_cgroup_path(cgroup_parent, pod_uid, self.config.base)

    def leaf_path(self, pod_cgroup: str, leaf_id: str) -> str:
        """The cgroup of a container or of a pod's init."""
        return cgroup_paths.container_cgroup_path(pod_cgroup, leaf_id, systemd=self.uses_systemd)

    def oci_cgroups_path(self, pod_cgroup: str, container_id: str) -> str:
        """The spec's linux.cgroupsPath: the cgroupfs path, or systemd's `<pod slice>:crisp:<id>`."""
        if self.uses_systemd:
            return cgroup_paths.systemd_cgroups_path(pod_cgroup, container_id)
        return self.leaf_path(pod_cgroup, container_id)

    def _crisps_own_slice(self, path: str) -> bool:
        return cgroup_paths.parent(path) == cgroup_paths.expand_slice(cgroup_paths.SYSTEMD_SLICE)

    # ---------------------------------------------------------------------------------------------- pods

    async def create_pod_cgroup(self, path: str) -> bool:
        """Make the pod cgroup unless it is the kubelet's (exists, or its slice: systemd makes the kubelet's slices
        itself); True when crisp made it (then `remove_pod_cgroup` takes it away)."""
        if not self.uses_systemd:
            cg = await asyncio.to_thread(self.manager().create, path, exist_ok=True)
            return await asyncio.to_thread(cg.created_by_crisp)
        if not self._crisps_own_slice(path):
            return False
        unit = cgroup_paths.unit_of(path)
        try:
            await self._bus().start_transient_unit(unit, slice_properties(description=f"crisp pod {unit}"))
        except errors.AlreadyExists:
            log.info("pod slice %s exists already (an earlier attempt): using it", unit)
        try:
            await asyncio.to_thread(self.manager().adopt, path)
        except BaseException:
            await self._stop(unit)
            raise
        return True

    async def remove_pod_cgroup(self, path: str) -> None:
        """The pod cgroup if crisp made it (the kubelet's stays), and with cgroupfs the empty levels above it that
        crisp made for it, up to the base."""
        manager = self.manager()
        if self.uses_systemd:
            if self._crisps_own_slice(path):
                await self._stop(cgroup_paths.unit_of(path))
            return
        base = cgroup_paths.normalize(self.config.base)

        def remove() -> None:
            current = path
            while current not in ("/", base):
                cgroup = manager.cgroup(current)
                if not cgroup.exists():
                    current = cgroup_paths.parent(current)
                    continue
                if not cgroup.created_by_crisp() or cgroup.children() or cgroup.procs():
                    return
                cgroup.remove()
                current = cgroup_paths.parent(current)

        await asyncio.to_thread(remove)

    async def place_pod_init(self, pod_cgroup: str, sandbox_id: str, pid: int) -> None:
        """The pod's init (and, with systemd, the `unshare` that waits for it) into its own leaf."""
        path = self.leaf_path(pod_cgroup, sandbox_id)
        if not self.uses_systemd:
            leaf = await asyncio.to_thread(self.manager().create, path, exist_ok=True)
            await asyncio.to_thread(leaf.add_process, pid)
            return
        pids = [pid, *await asyncio.to_thread(_waiting_parent, pid)]
        await self._start_scope(path, pids, f"crisp pod init {sandbox_id}", {})

    async def remove_leaf(self, path: str) -> None:
        """A container's or a pod init's cgroup, once its processes are gone (absent is fine). With systemd: its
        scope is stopped (runc's and crun's are gone already: they stop their own)."""
        cg = self.manager().cgroup(path)
        if not self.uses_systemd:
            if await asyncio.to_thread(lambda: cg.exists() and cg.created_by_crisp()):
                await asyncio.to_thread(cg.remove)
            return
        if path.endswith(".scope"):
            await self._stop(cgroup_paths.unit_of(path))

    # ---------------------------------------------------------------------------------------------- containers

    async def start_container_scope(self, path: str, container_id: str, held_pid: int,
                                    resources: Mapping[str, Any]) -> None:
        """The built-in executor's container under systemd: its scope, with the container's held first process in
        it. Failing, that process is killed (it has done nothing yet: the create then fails) and the scope stopped."""
        try:
            await self._start_scope(path, [held_pid], f"crisp container {container_id}", resources)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(held_pid, signal.SIGKILL)
            raise

    async def update(self, path: str, resources: Mapping[str, Any]) -> None:
        """Live limits of a crisp cgroup: with systemd, the unit's properties first (systemd then keeps them), then
        the files, which carry the exact values (`apply`, every limit required)."""
        manager = self.manager()
        if self.uses_systemd:
            await self._bus().set_unit_properties(cgroup_paths.unit_of(path), resource_properties(resources))
        cg = await asyncio.to_thread(manager.open, path)
        await asyncio.to_thread(cg.apply, resources)

    # ---------------------------------------------------------------------------------------------- shims

    async def place_shim(self, container_id: str, shim_pid: int) -> None:
        """With systemd, a shim goes into a scope of its own (see the module's doc)."""
        if not self.uses_systemd:
            return
        unit = cgroup_paths.shim_scope_name(container_id)
        props = scope_properties(slice_name=cgroup_paths.SHIM_SLICE, pids=[shim_pid],
                                 description=f"crisp shim of container {container_id}", delegate=False)
        await self._bus().start_transient_unit(unit, props)

    async def shim_gone(self, container_id: str) -> None:
        """After a container was removed: its shim's scope, if one is left (a shim that exited ends it)."""
        if self.uses_systemd:
            await self._stop(cgroup_paths.shim_scope_name(container_id))

    # ---------------------------------------------------------------------------------------------- units

    async def _start_scope(self, path: str, pids: list[int], description: str, resources: Mapping[str, Any]
                           ) -> None:
        unit = cgroup_paths.unit_of(path)
        slice_name = cgroup_paths.unit_of(cgroup_paths.parent(path))
        props = scope_properties(slice_name=slice_name, pids=pids, description=description)
        await self._bus().start_transient_unit(unit, props + resource_properties(resources))
        try:
            await asyncio.to_thread(self.manager().adopt, path, resources)
        except BaseException:
            await self._stop(unit)
            raise
        log.debug("systemd: %s started in %s with pids %s", unit, slice_name, pids)

    async def _stop(self, unit: str) -> None:
        systemd = self._bus()
        try:
            await systemd.stop_unit(unit)
        finally:
            await systemd.reset_failed_unit(unit)

    async def close(self) -> None:
        if self.systemd is not None:
            await self.systemd.close()


def _waiting_parent(pid: int) -> list[int]:
    """The `unshare --fork` that started a pod init and waits for it, when it is its parent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{ppid}/comm") as f:
            return [ppid] if f.read().strip() == "unshare" else []
    except (OSError, ValueError, IndexError):
        return []
