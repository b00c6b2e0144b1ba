"""StartContainer: a created container's init execs its process; crisp watches it until it exits."""

from __future__ import annotations

from cri import api as cri
from cri.service.context import ServiceContext


async def start_container(ctx: ServiceContext, request: cri.StartContainerRequest) -> cri.StartContainerResponse:
    await ctx.container_control.start(ctx.containers.get(request.container_id))
    return cri.StartContainerResponse()
