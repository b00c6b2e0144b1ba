"""PodSandboxStatus and ListPodSandbox."""

from __future__ import annotations

import json

from cri import api as cri
from cri.service.container_status import pod_container_statuses
from cri.service.context import ServiceContext
from cri.store.sandboxes import READY, Sandbox

_STATES: dict[str, cri.PodSandboxState.ValueType] = {READY: cri.SANDBOX_READY}


def cri_state(sandbox: Sandbox) -> cri.PodSandboxState.ValueType:
    return _STATES.get(sandbox.status.state, cri.SANDBOX_NOTREADY)


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
        state=cri_state(sandbox),
        created_at=sandbox.meta.created_at,
        network=_network_status(sandbox),
        linux=cri.LinuxPodSandboxStatus(namespaces=cri.Namespace(options=_namespace_options(sandbox))),
        labels=config.labels,
        annotations=config.annotations,
        runtime_handler=sandbox.meta.runtime_handler,
    )


def _verbose_info(sandbox: Sandbox) -> dict[str, str]:
    meta, status = sandbox.meta, sandbox.status
    from google.protobuf import json_format

    info = {
        "pid": status.pod_init[0] if status.pod_init else 0,
        "namespaces": meta.namespaces,
        "netns": meta.namespaces.get("net", ""),
        "cgroup": meta.cgroup,
        "dir": meta.dir,
        "hostname": meta.hostname,
        "runtimeHandler": meta.runtime_handler,
        "network": status.network,
        "config": json_format.MessageToDict(meta.config),
    }
    return {"info": json.dumps(info, sort_keys=True)}


async def pod_sandbox_status(ctx: ServiceContext, request: cri.PodSandboxStatusRequest
                             ) -> cri.PodSandboxStatusResponse:
    sandbox = ctx.sandboxes.get(request.pod_sandbox_id)
    response = cri.PodSandboxStatusResponse(
        status=sandbox_status(sandbox),
        containers_statuses=pod_container_statuses(ctx, sandbox.id),
        timestamp=ctx.clock_ns(),
    )
    if request.verbose:
        response.info.update(_verbose_info(sandbox))
    return response


def _matches(sandbox: Sandbox, flt: cri.PodSandboxFilter) -> bool:
    if flt.id and not sandbox.id.startswith(flt.id):
        return False
    if flt.HasField("state") and cri_state(sandbox) != flt.state.state:
        return False
    labels = sandbox.meta.config.labels
    return all(labels.get(k) == v for k, v in flt.label_selector.items())


def _summary(sandbox: Sandbox) -> cri.PodSandbox:
    config = sandbox.meta.config
    return cri.PodSandbox(id=sandbox.id, metadata=config.metadata, state=cri_state(sandbox),
                          created_at=sandbox.meta.created_at, labels=config.labels,
                          annotations=config.annotations, runtime_handler=sandbox.meta.runtime_handler)


async def list_pod_sandbox(ctx: ServiceContext, request: cri.ListPodSandboxRequest) -> cri.ListPodSandboxResponse:
    sandboxes = [s for s in ctx.sandboxes.all() if _matches(s, request.filter)]
    sandboxes.sort(key=lambda s: s.meta.created_at)
    return cri.ListPodSandboxResponse(items=[_summary(s) for s in sandboxes])
