"""StopPodSandbox and RemovePodSandbox: idempotent, a missing pod is OK."""

from __future__ import annotations

import logging

from cri import api as cri
from cri.service.container_run import remove_pod_containers, stop_pod_containers
from cri.service.context import ServiceContext
from cri.service.sandbox_teardown import kill_pod_processes, release_pod_resources, teardown_pod_network
from cri.store.sandboxes import NOT_READY, READY, Sandbox

log = logging.getLogger(__name__)


async def stop_pod_sandbox(ctx: ServiceContext, request: cri.StopPodSandboxRequest
                           ) -> cri.StopPodSandboxResponse:
    sandbox = ctx.sandboxes.find(request.pod_sandbox_id)
    if sandbox is None:
        log.debug("StopPodSandbox %s: no such pod, nothing to do", request.pod_sandbox_id)
        return cri.StopPodSandboxResponse()
    async with sandbox.lock:
        await stop_sandbox(ctx, sandbox)
    return cri.StopPodSandboxResponse()


async def stop_sandbox(ctx: ServiceContext, sandbox: Sandbox) -> None:
    """Kill everything in the pod (no grace: the kubelet stops containers first) and tear its network down."""
    await stop_pod_containers(ctx, sandbox.id)
    await kill_pod_processes(ctx, sandbox)
    if sandbox.status.state == READY:
        await ctx.nri.stop_pod_sandbox(sandbox)  # once, with the containers stopped and the pod still there
    await teardown_pod_network(ctx, sandbox)
    if sandbox.status.state == READY:
        await ctx.sandboxes.update(sandbox, state=NOT_READY)
        log.info("pod %s stopped", sandbox.id)
        ctx.sandbox_event(sandbox, cri.CONTAINER_STOPPED_EVENT)


async def remove_pod_sandbox(ctx: ServiceContext, request: cri.RemovePodSandboxRequest
                             ) -> cri.RemovePodSandboxResponse:
    sandbox = ctx.sandboxes.find(request.pod_sandbox_id)
    if sandbox is None:
        log.debug("RemovePodSandbox %s: no such pod, nothing to do", request.pod_sandbox_id)
        return cri.RemovePodSandboxResponse()
    async with sandbox.lock:
        if ctx.sandboxes.find(sandbox.id) is None:  # removed while we waited for the lock
            return cri.RemovePodSandboxResponse()
        await stop_sandbox(ctx, sandbox)
        await remove_pod_containers(ctx, sandbox.id)
        await teardown_pod_network(ctx, sandbox)  # again: a stop may have found the network busy
        await release_pod_resources(ctx, sandbox)
        await ctx.sandboxes.delete(sandbox)
        await ctx.sandbox_names.release(sandbox.meta.name, sandbox.id)
    log.info("pod %s removed", sandbox.id)
    ctx.sandbox_event(sandbox, cri.CONTAINER_DELETED_EVENT)
    await ctx.nri.remove_pod_sandbox(sandbox)
    return cri.RemovePodSandboxResponse()
