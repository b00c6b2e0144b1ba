"""PodSandboxStats: the pod cgroup's CPU, memory and processes, the pod's network interfaces (read inside its
network namespace by a network helper) and the stats of its created and running containers; a stopped pod reports
what is left."""

from __future__ import annotations

from cri import api as cri
from cri.service.context import ServiceContext
from cri.usage import sandboxes_stats


async def pod_sandbox_stats(ctx: ServiceContext, request: cri.PodSandboxStatsRequest) -> cri.PodSandboxStatsResponse:
    sandbox = ctx.sandboxes.get(request.pod_sandbox_id)
    (stats,) = await sandboxes_stats(ctx.stats, ctx.root_dir / "containers", ctx.containers, [sandbox])
    return cri.PodSandboxStatsResponse(stats=stats)
