"""PodSandboxStatus: the pod's status and its containers' (verbose: crisp's own view of the pod as JSON)."""

from __future__ import annotations

import json

from google.protobuf import json_format

from cri import api as cri
from cri.service.context import ServiceContext
from cri.status import pod_container_statuses, sandbox_status
from cri.store.sandboxes import Sandbox


def _verbose_info(sandbox: Sandbox) -> dict[str, str]:
    meta, status = sandbox.meta, sandbox.status
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
        containers_statuses=pod_container_statuses(ctx.containers, sandbox.id),
        timestamp=ctx.clock_ns(),
    )
    if request.verbose:
        response.info.update(_verbose_info(sandbox))
    return response
