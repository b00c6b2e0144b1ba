"""UpdatePodSandboxResources: the pod cgroup sized live, when crisp made it (the kubelet sizes its own)."""

from __future__ import annotations

from cri import api as cri
from cri.service.context import ServiceContext


async def update_pod_sandbox_resources(ctx: ServiceContext, request: cri.UpdatePodSandboxResourcesRequest
                                       ) -> cri.UpdatePodSandboxResourcesResponse:
    sandbox = ctx.sandboxes.get(request.pod_sandbox_id)
    if request.HasField("resources"):
        await ctx.sandbox_control.update_resources(sandbox, request.resources)
    return cri.UpdatePodSandboxResourcesResponse()
