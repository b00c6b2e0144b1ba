"""UpdateContainerResources: the container's limits changed live by the component that owns its cgroup, and kept
in crisp's record as the resources in force (ContainerStatus.resources reports them)."""

from __future__ import annotations

from cri import api as cri
from cri.service.context import ServiceContext


async def update_container_resources(ctx: ServiceContext, request: cri.UpdateContainerResourcesRequest
                                     ) -> cri.UpdateContainerResourcesResponse:
    container = ctx.containers.get(request.container_id)
    if request.HasField("linux"):
        await ctx.container_control.update_resources(container, request.linux)
    return cri.UpdateContainerResourcesResponse()
