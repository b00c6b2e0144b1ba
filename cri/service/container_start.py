"""StartContainer: a created container is made if CreateContainer left it unmade (the executor creates it through
its shim, cri/lifecycle/containers.py), then its init execs its process; crisp watches it until it exits."""

from __future__ import annotations

from pathlib import Path

from cri import api as cri
from cri.service.context import ServiceContext
from cri.service.shim_plans import shim_plan


async def start_container(ctx: ServiceContext, request: cri.StartContainerRequest) -> cri.StartContainerResponse:
    container = ctx.containers.get(request.container_id)
    meta = container.meta
    plan = shim_plan(ctx, meta.id, Path(meta.bundle), meta.handler, meta.log_path, meta.config, meta.cgroup) \
        if container.unmade else None
    await ctx.container_control.start(container, plan)
    return cri.StartContainerResponse()
