"""The live limits of a created or running container: applied through the components that own its cgroup (with the
systemd driver crispd's D-Bus calls set the scope's unit properties first; then the shim runs the executor's
`update`, which writes the files, as runc has it; runc and crun with `--systemd-cgroup` set their own scope's
properties too), kept in its record (ContainerStatus.resources). A container not made yet (CreateContainer leaves
that to StartContainer) has no cgroup: its new limits go into its spec (config.json), which it is made with.

Its own part, apart from the container controller, because two callers need it: UpdateContainerResources (through
the controller, which NRI plugins may amend) and the updates NRI plugins ask for themselves (cri/nri/service.py),
which the controller's NRI calls can bring about."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cri import api as cri
from cri.cgroup_driver import CgroupDriver
from cri.oci import oci_resources, resources_in_force
from cri.shims.manager import ShimManager
from cri.store.containers import CREATED, RUNNING, Container, ContainerStore
from runtime import errors
from runtime.bundle import load_config, write_config
from runtime.cgroups import enforceable_limits
from runtime.ociedit import update_resources

log = logging.getLogger(__name__)


def _update_spec(bundle: str, limits: dict[str, Any]) -> None:
    spec = load_config(bundle)
    update_resources(spec, limits)
    write_config(bundle, spec)


class ContainerLimits:
    def __init__(self, *, containers: ContainerStore, shims: ShimManager, cgroups: CgroupDriver,
                 missing_controller: str) -> None:
        self.containers = containers
        self.shims = shims
        self.cgroups = cgroups
        self.missing_controller = missing_controller

    @staticmethod
    def check(container: Container) -> None:
        """Only a created or running container has limits to change."""
        if container.status.state not in (RUNNING, CREATED):
            raise errors.FailedPrecondition(f"container {container.id} is {container.status.state}")

    async def update(self, container: Container, resources: cri.LinuxContainerResources) -> None:
        """`apply`, under the container's lock."""
        async with container.lock:
            self.check(container)
            await self.apply(container, resources)

    async def apply(self, container: Container, resources: cri.LinuxContainerResources) -> None:
        """Apply with the container's lock held by the caller. The missing-controller policy applies as at create:
        crispd decides what is dropped, the executor treats the rest as required."""
        oci = oci_resources(resources, swap_limit=True)
        missing = await asyncio.to_thread(self.cgroups.manager().missing_controllers, oci, container.meta.cgroup)
        limits = enforceable_limits(oci, missing, self.missing_controller, f"container {container.id}")
        if container.unmade:
            # no cgroup yet: the limits go into its spec, which StartContainer makes it with
            await asyncio.to_thread(_update_spec, container.meta.bundle, limits)
        else:
            await self.cgroups.set_unit_resources(container.meta.cgroup, limits)
            await self.shims.client(container.id).update(limits)
        in_force = resources_in_force(resources, (m.key for m in missing))  # what is left after "warn"
        await self.containers.update(container, resources=in_force.SerializeToString().hex(),
                                     dropped_limits=[str(m) for m in missing])
        log.info("container %s: resources updated", container.id)
