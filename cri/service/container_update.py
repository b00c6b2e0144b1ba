"""UpdateContainerResources, UpdatePodSandboxResources, ReopenContainerLog and ExecSync."""

from __future__ import annotations

import asyncio
import logging

from cri import api as cri
from cri.oci import oci_resources
from cri.service.context import ServiceContext
from cri.store.containers import RUNNING
from runtime import errors
from runtime.cgroups import drop_limits

log = logging.getLogger(__name__)

# the kubelet's CRI client refuses replies over 16 MiB: ExecSync output stays below that
MAX_EXEC_SYNC_OUTPUT = 16 * 1024 * 1024 - 64 * 1024


async def _apply(ctx: ServiceContext, cgroup_path: str, resources: cri.LinuxContainerResources, what: str) -> None:
    """Apply CRI resources to a crisp cgroup, live; limits without their controller follow the config's rule."""
    manager = ctx.cgroup_manager()
    oci = oci_resources(resources, swap_limit=True)

    def check() -> None:
        nonlocal oci
        missing = manager.missing_controllers(oci, cgroup_path)
        if missing:
            described = ", ".join(f"{m.key} (needs {m.controller})" for m in missing)
            if ctx.config.cgroup.missing_controller == "error":
                raise errors.FailedPrecondition(f"{what}: this node's cgroup v2 lacks controllers for {described}")
            log.warning("%s: dropping limits this node cannot enforce: %s", what, described)
            oci = drop_limits(oci, missing)

    await asyncio.to_thread(check)
    await ctx.cgroup_driver.update(cgroup_path, oci)


async def update_container_resources(ctx: ServiceContext, request: cri.UpdateContainerResourcesRequest
                                     ) -> cri.UpdateContainerResourcesResponse:
    container = ctx.containers.get(request.container_id)
    async with container.lock:
        if container.status.state not in (RUNNING, "created"):
            raise errors.FailedPrecondition(f"container {container.id} is {container.status.state}")
        if request.HasField("linux"):
            await _apply(ctx, container.meta.cgroup, request.linux, f"container {container.id}")
            await ctx.containers.update(container, resources=request.linux.SerializeToString().hex())
    return cri.UpdateContainerResourcesResponse()


async def update_pod_sandbox_resources(ctx: ServiceContext, request: cri.UpdatePodSandboxResourcesRequest
                                       ) -> cri.UpdatePodSandboxResourcesResponse:
    sandbox = ctx.sandboxes.get(request.pod_sandbox_id)
    if request.HasField("resources"):
        cgroup = ctx.cgroup_manager().cgroup(sandbox.meta.cgroup)
        if not await asyncio.to_thread(cgroup.created_by_crisp):
            raise errors.FailedPrecondition(
                f"pod {sandbox.id}: its cgroup {sandbox.meta.cgroup} is the kubelet's; the kubelet sizes it")
        await _apply(ctx, sandbox.meta.cgroup, request.resources, f"pod {sandbox.id}")
    return cri.UpdatePodSandboxResourcesResponse()


async def reopen_container_log(ctx: ServiceContext, request: cri.ReopenContainerLogRequest
                               ) -> cri.ReopenContainerLogResponse:
    container = ctx.containers.get(request.container_id)
    if container.status.state != RUNNING:
        raise errors.FailedPrecondition(f"container {container.id} is not running: its log is closed")
    await ctx.shims.client(container.id).reopen_log()
    return cri.ReopenContainerLogResponse()


async def exec_sync(ctx: ServiceContext, request: cri.ExecSyncRequest) -> cri.ExecSyncResponse:
    container = ctx.containers.get(request.container_id)
    if container.status.state != RUNNING:
        raise errors.FailedPrecondition(f"container {container.id} is not running")
    if not request.cmd:
        raise errors.InvalidArgument("ExecSync needs a command")
    result = await ctx.shims.client(container.id).exec_sync(
        list(request.cmd), exec_timeout=float(request.timeout), max_output=MAX_EXEC_SYNC_OUTPUT)
    if result.timed_out:
        raise errors.DeadlineExceeded(
            f"command {list(request.cmd)!r} in container {container.id} timed out after {request.timeout}s")
    return cri.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)
