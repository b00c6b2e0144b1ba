"""The cgroup driver crispd runs pods with (`[cgroup] driver`): who makes and removes the pod, pod-init and container
cgroups, and who owns their units. Where each cgroup goes is `runtime.cgroups.paths.Layout`'s.

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
- removal is StopUnit (which waits until the cgroup is gone) plus ResetFailedUnit; live limits are
  SetUnitProperties (`set_unit_resources`), before the files are written by their owner (the executor's `update`
  for a container, the pod controller for a pod cgroup crisp made).
Every cgroupfs call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from cri.config import CgroupConfig
from runtime import errors
from runtime.cgroups import CgroupV2Manager
from runtime.cgroups import paths as cgroup_paths
from runtime.systemd import resource_properties, scope_properties, slice_properties

if TYPE_CHECKING:
    from runtime.systemd.manager import Systemd

log = logging.getLogger(__name__)

Hook = Callable[[int], Awaitable[None]]


class CgroupDriver:
    """cgroupfs or systemd, as the config says; `manager` raises FailedPrecondition when the host has no cgroup2."""

    def __init__(self, config: CgroupConfig, manager: Callable[[], CgroupV2Manager],
                 systemd: Systemd | None = None) -> None:
        self.manager = manager
        self.systemd: Systemd | None = None
        if config.driver == "systemd":
            if systemd is None:
                from runtime.systemd.manager import Systemd  # the D-Bus client: only this driver loads it

                systemd = Systemd(bus=config.systemd_bus)
            self.systemd = systemd
        self.layout = cgroup_paths.Layout(systemd=self.systemd is not None, base=config.base)
        self._base = cgroup_paths.normalize(config.base)

    @property
    def uses_systemd(self) -> bool:
        return self.systemd is not None

    def _bus(self) -> Systemd:
        if self.systemd is None:
            raise errors.FailedPrecondition("the cgroupfs driver makes no systemd units")
        return self.systemd

    def executor_flags(self) -> list[str]:
        """What the executor's command line gets: with systemd, `--systemd-cgroup` (runc and crun make the
        container's scope themselves, the built-in executor waits in the one crispd makes)."""
        return ["--systemd-cgroup"] if self.uses_systemd else []

    # ---------------------------------------------------------------------------------------------- pods

    async def create_pod_cgroup(self, path: str) -> None:
        """Make the pod cgroup unless it is the kubelet's (with systemd: a slice not under crisp.slice, which systemd
        makes itself); `remove_pod_cgroup` takes away only what crisp made."""
        if not self.uses_systemd:
            await asyncio.to_thread(self.manager().create, path, exist_ok=True)
            return
        if not self.layout.crisps_pod_slice(path):
            return
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
        log.debug("systemd: pod slice %s started", unit)

    async def remove_pod_cgroup(self, path: str) -> None:
        """The pod cgroup if crisp made it (the kubelet's own stays) and nothing is in it (another attempt of the
        same pod may share it); with cgroupfs then the empty levels above it that crisp made for it, up to the
        base."""
        manager = self.manager()

        def unused(current: str) -> bool:
            cgroup = manager.cgroup(current)
            return not cgroup.exists() or not (cgroup.children() or cgroup.procs())

        if self.uses_systemd:
            if self.layout.crisps_pod_slice(path) and await asyncio.to_thread(unused, path):
                await self._stop(cgroup_paths.unit_of(path))
            return

        def remove() -> None:
            current = path
            while current not in ("/", self._base):
                cgroup = manager.cgroup(current)
                if not cgroup.exists():
                    current = cgroup_paths.parent(current)
                    continue
                if not cgroup.created_by_crisp() or not unused(current):
                    return
                cgroup.remove()
                current = cgroup_paths.parent(current)

        await asyncio.to_thread(remove)

    async def pod_init_birthplace(self, pod_cgroup: str, sandbox_id: str) -> str:
        """With cgroupfs, the pod init's own leaf, made now: the directory PID 1 is to be born in (no migration
        afterwards, whose write to cgroup.procs waits for an RCU grace period); its undo is `remove_leaf`. '' with
        systemd (the scope is started with the pid)."""
        if self.uses_systemd:
            return ""
        leaf = await asyncio.to_thread(self.manager().create, self.layout.leaf(pod_cgroup, sandbox_id), exist_ok=True)
        return str(leaf.dir)

    async def place_pod_init(self, pod_cgroup: str, sandbox_id: str, pid: int, born_there: bool) -> None:
        """The pod's init into its own leaf (with systemd a scope: the process that made its PID namespace has
        exited by now, PID 1 is the pod init's only process); nothing to do for one born there (`born_there`: in
        the leaf `pod_init_birthplace` made)."""
        if born_there:
            return
        path = self.layout.leaf(pod_cgroup, sandbox_id)
        if not self.uses_systemd:
            def place() -> None:
                leaf = self.manager().create(path, exist_ok=True)
                if pid not in leaf.procs():
                    leaf.add_process(pid)
            await asyncio.to_thread(place)
            return
        await self._start_scope(path, [pid], f"crisp pod init {sandbox_id}", {})

    async def remove_leaf(self, path: str) -> None:
        """A container's or a pod init's cgroup, once its processes are gone (absent is fine). With systemd: its
        scope is stopped (runc's and crun's are gone already: they stop their own)."""
        if self.uses_systemd:
            if path.endswith(".scope"):
                await self._stop(cgroup_paths.unit_of(path))
            return
        cg = self.manager().cgroup(path)
        if await asyncio.to_thread(lambda: cg.exists() and cg.created_by_crisp()):
            await asyncio.to_thread(cg.remove)

    async def set_unit_resources(self, path: str, resources: Mapping[str, Any]) -> None:
        """Live limits, systemd's part: the unit's properties, so that systemd keeps them (the files, with the
        exact values, are their owner's to write next). Nothing with cgroupfs."""
        if self.uses_systemd:
            await self._bus().set_unit_properties(cgroup_paths.unit_of(path), resource_properties(resources))

    # ---------------------------------------------------------------------------------------------- containers

    def container_hold(self, path: str, container_id: str,
                       resources: Callable[[], Awaitable[Mapping[str, Any]]]) -> Hook | None:
        """With systemd, for the built-in executor: what crispd does with the container's held first process (the
        shim's first reply to a held create): start its scope with it, with the limits `resources()` gives (read
        only then: the spec's, as UpdateContainerResources may have changed them). None with cgroupfs."""
        if not self.uses_systemd:
            return None

        async def held(first_pid: int) -> None:
            # failing, that process is killed (it has done nothing yet: the create then fails)
            try:
                await self._start_scope(path, [first_pid], f"crisp container {container_id}", await resources())
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(first_pid, signal.SIGKILL)
                raise

        return held

    # ---------------------------------------------------------------------------------------------- shims

    def shim_placement(self, container_id: str) -> Hook | None:
        """With systemd, where a new shim goes before it creates its container: a scope of its own (the module's
        doc). None with cgroupfs (a shim stays where crispd is)."""
        if not self.uses_systemd:
            return None

        async def place(shim_pid: int) -> None:
            unit = cgroup_paths.shim_scope_name(container_id)
            props = scope_properties(slice_name=cgroup_paths.SHIM_SLICE, pids=[shim_pid],
                                     description=f"crisp shim of container {container_id}", delegate=False)
            await self._bus().start_transient_unit(unit, props)

        return place

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

