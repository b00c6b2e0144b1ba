"""ListPodSandboxStats: PodSandboxStats of the ready pods that match the filter (a stopped pod has nothing running)."""

from __future__ import annotations

from cri import api as cri
from cri.service.context import ServiceContext
from cri.store.sandboxes import READY, Sandbox
from cri.usage import forget_removed, sandboxes_stats


def _matches(sandbox: Sandbox, flt: cri.PodSandboxStatsFilter) -> bool:
    if flt.id and not sandbox.id.startswith(flt.id):
        return False
    labels = sandbox.meta.config.labels
    return all(labels.get(k) == v for k, v in flt.label_selector.items())


async def list_pod_sandbox_stats(ctx: ServiceContext, request: cri.ListPodSandboxStatsRequest
                                 ) -> cri.ListPodSandboxStatsResponse:
    sandboxes = [s for s in ctx.sandboxes.all() if s.status.state == READY and _matches(s, request.filter)]
    sandboxes.sort(key=lambda s: s.meta.created_at)
    stats = await sandboxes_stats(ctx.stats, ctx.root_dir / "containers", ctx.containers, sandboxes)
    forget_removed(ctx.stats, ctx.containers, ctx.sandboxes)
    return cri.ListPodSandboxStatsResponse(stats=stats)
