"""ContainerStats: one container's CPU, memory, swap and I/O (its cgroup) and its writable layer."""

from __future__ import annotations

from cri import api as cri
from cri.service.context import ServiceContext
from cri.usage import containers_stats


async def container_stats(ctx: ServiceContext, request: cri.ContainerStatsRequest) -> cri.ContainerStatsResponse:
    container = ctx.containers.get(request.container_id)
    (stats,) = await containers_stats(ctx.stats, ctx.root_dir / "containers", [container])
    return cri.ContainerStatsResponse(stats=stats)
