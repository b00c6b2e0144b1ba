"""ContainerStatus and ListContainers."""

from __future__ import annotations

import json

from google.protobuf import json_format

from cri import api as cri
from cri.oci import cri_signal
from cri.service.context import ServiceContext
from cri.store.containers import CREATED, EXITED, RUNNING, Container

_STATES: dict[str, cri.ContainerState.ValueType] = {
    CREATED: cri.CONTAINER_CREATED, RUNNING: cri.CONTAINER_RUNNING, EXITED: cri.CONTAINER_EXITED}


def cri_state(container: Container) -> cri.ContainerState.ValueType:
    return _STATES.get(container.status.state, cri.CONTAINER_UNKNOWN)


def _resources(container: Container) -> cri.ContainerResources | None:
    if not container.status.resources:
        return None
    linux = cri.LinuxContainerResources.FromString(bytes.fromhex(container.status.resources))
    return cri.ContainerResources(linux=linux)


def container_status(container: Container) -> cri.ContainerStatus:
    meta, status = container.meta, container.status
    config = meta.config
    result = cri.ContainerStatus(
        id=meta.id, metadata=config.metadata, state=cri_state(container), created_at=meta.created_at,
        started_at=status.started_at, finished_at=status.finished_at, exit_code=status.exit_code,
        image=cri.ImageSpec(image=meta.image_name, annotations=config.image.annotations),
        image_ref=meta.image_ref, image_id=meta.image_id, reason=status.reason, message=status.message,
        labels=config.labels, annotations=config.annotations,
        mounts=list(config.mounts),  # exactly the CRI mounts, never the ones crisp adds
        log_path=meta.log_path,
        user=cri.ContainerUser(linux=cri.LinuxContainerUser(uid=meta.uid, gid=meta.gid,
                                                            supplemental_groups=list(meta.groups))),
        stop_signal=cri_signal(meta.stop_signal),
    )
    resources = _resources(container)
    if resources is not None:
        result.resources.CopyFrom(resources)
    return result


async def container_status_rpc(ctx: ServiceContext, request: cri.ContainerStatusRequest
                               ) -> cri.ContainerStatusResponse:
    container = ctx.containers.get(request.container_id)
    response = cri.ContainerStatusResponse(status=container_status(container))
    if request.verbose:
        meta = container.meta
        info = {"sandboxID": meta.sandbox_id, "pid": container.status.pid, "bundle": meta.bundle,
                "runtimeHandler": meta.handler, "cgroup": meta.cgroup, "lowerdirs": list(meta.lowerdirs),
                "config": json_format.MessageToDict(meta.config)}
        response.info["info"] = json.dumps(info, sort_keys=True)
    return response


def _matches(container: Container, flt: cri.ContainerFilter) -> bool:
    if flt.id and not container.id.startswith(flt.id):
        return False
    if flt.HasField("state") and cri_state(container) != flt.state.state:
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
        image_ref=meta.image_ref, image_id=meta.image_id, state=cri_state(container),
        created_at=meta.created_at, labels=meta.config.labels, annotations=meta.config.annotations)


async def list_containers(ctx: ServiceContext, request: cri.ListContainersRequest) -> cri.ListContainersResponse:
    containers = [c for c in ctx.containers.all() if _matches(c, request.filter)]
    containers.sort(key=lambda c: c.meta.created_at)
    return cri.ListContainersResponse(containers=[_summary(c) for c in containers])


def pod_container_statuses(ctx: ServiceContext, sandbox_id: str) -> list[cri.ContainerStatus]:
    return [container_status(c) for c in ctx.containers.of_sandbox(sandbox_id)]
