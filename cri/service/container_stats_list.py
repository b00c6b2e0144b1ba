"""ListContainerStats: ContainerStats of the created and running containers that match the filter ("stats of all
running containers": an exited one has nothing left to use)."""

from __future__ import annotations

from cri import api as cri
from cri.service.context import ServiceContext
from cri.store.containers import Container
from cri.usage import containers_stats, forget_removed, live_containers


def _matches(container: Container, flt: cri.ContainerStatsFilter) -> bool:
    if flt.id and not container.id.startswith(flt.id):
        return False
    if flt.pod_sandbox_id and not container.meta.sandbox_id.startswith(flt.pod_sandbox_id):
        return False
    labels = container.meta.config.labels
    return all(labels.get(k) == v for k, v in flt.label_selector.items())


async def list_container_stats(ctx: ServiceContext, request: cri.ListContainerStatsRequest
                               ) -> cri.ListContainerStatsResponse:
    containers = [c for c in live_containers(ctx.containers) if _matches(c, request.filter)]
    stats = await containers_stats(ctx.stats, ctx.root_dir / "containers", containers)
    forget_removed(ctx.stats, ctx.containers, ctx.sandboxes)
    return cri.ListContainerStatsResponse(stats=stats)
