"""The CRI status messages of crisp's records: ContainerStatus, PodSandboxStatus and their states.

Shared by the status and list RPCs and by the container events (which carry the statuses of a pod and of its
containers as they are at the moment of the change).
"""

from __future__ import annotations

from cri import api as cri
from cri.oci import cri_signal
from cri.store.containers import CREATED, EXITED, RUNNING, Container, ContainerStore
from cri.store.sandboxes import READY, Sandbox

_CONTAINER_STATES: dict[str, cri.ContainerState.ValueType] = {
    CREATED: cri.CONTAINER_CREATED, RUNNING: cri.CONTAINER_RUNNING, EXITED: cri.CONTAINER_EXITED}
_SANDBOX_STATES: dict[str, cri.PodSandboxState.ValueType] = {READY: cri.SANDBOX_READY}


def container_state(container: Container) -> cri.ContainerState.ValueType:
    return _CONTAINER_STATES.get(container.status.state, cri.CONTAINER_UNKNOWN)


def sandbox_state(sandbox: Sandbox) -> cri.PodSandboxState.ValueType:
    return _SANDBOX_STATES.get(sandbox.status.state, cri.SANDBOX_NOTREADY)


def container_resources(container: Container) -> cri.ContainerResources | None:
    """The resources in force (as created, then as UpdateContainerResources last set them)."""
    if not container.status.resources:
        return None
    linux = cri.LinuxContainerResources.FromString(bytes.fromhex(container.status.resources))
    return cri.ContainerResources(linux=linux)


def container_status(container: Container) -> cri.ContainerStatus:
    meta, status = container.meta, container.status
    config = meta.config
    result = cri.ContainerStatus(
        id=meta.id, metadata=config.metadata, state=container_state(container), created_at=meta.created_at,
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
    resources = container_resources(container)
    if resources is not None:
        result.resources.CopyFrom(resources)
    return result


def pod_container_statuses(containers: ContainerStore, sandbox_id: str) -> list[cri.ContainerStatus]:
    return [container_status(c) for c in containers.of_sandbox(sandbox_id)]


def _network_status(sandbox: Sandbox) -> cri.PodSandboxNetworkStatus:
    ips = [] if sandbox.meta.host_network else list(sandbox.status.ips)
    if not ips:
        return cri.PodSandboxNetworkStatus()
    return cri.PodSandboxNetworkStatus(ip=ips[0], additional_ips=[cri.PodIP(ip=ip) for ip in ips[1:]])


def _namespace_options(sandbox: Sandbox) -> cri.NamespaceOption:
    options = cri.NamespaceOption()
    options.CopyFrom(sandbox.meta.config.linux.security_context.namespace_options)
    return options


def sandbox_status(sandbox: Sandbox) -> cri.PodSandboxStatus:
    config = sandbox.meta.config
    return cri.PodSandboxStatus(
        id=sandbox.id,
        metadata=config.metadata,
        state=sandbox_state(sandbox),
        created_at=sandbox.meta.created_at,
        network=_network_status(sandbox),
        linux=cri.LinuxPodSandboxStatus(namespaces=cri.Namespace(options=_namespace_options(sandbox))),
        labels=config.labels,
        annotations=config.annotations,
        runtime_handler=sandbox.meta.runtime_handler,
    )
