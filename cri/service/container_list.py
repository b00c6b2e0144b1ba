"""ListContainers: the containers that match the filter (id and pod id prefixes, state, labels), oldest first."""

from __future__ import annotations

from cri import api as cri
from cri.service.context import ServiceContext
from cri.status import container_state
from cri.store.containers import Container


def _matches(container: Container, flt: cri.ContainerFilter) -> bool:
    if flt.id and not container.id.startswith(flt.id):
        return False
    if flt.HasField("state") and container_state(container) != flt.state.state:
        return False
    if flt.pod_sandbox_id and not container.meta.sandbox_id.startswith(flt.pod_sandbox_id):
        return False
    labels = container.meta.config.labels
    return all(labels.get(k) == v for k, v in flt.label_selector.items())


def _summary(container: Container) -> cri.Container:
    meta = container.meta
    return cri.Container(
        id=meta.id, pod_sandbox_id=meta.sandbox_id, metadata=meta.config.metadata,
        image=cri.ImageSpec(image=meta.image_name, annotations=meta.config.image.annotations),
        image_ref=meta.image_ref, image_id=meta.image_id, state=container_state(container),
        created_at=meta.created_at, labels=meta.config.labels, annotations=meta.config.annotations)


async def list_containers(ctx: ServiceContext, request: cri.ListContainersRequest) -> cri.ListContainersResponse:
    containers = [c for c in ctx.containers.all() if _matches(c, request.filter)]
    containers.sort(key=lambda c: c.meta.created_at)
    return cri.ListContainersResponse(containers=[_summary(c) for c in containers])
