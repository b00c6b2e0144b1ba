"""ContainerStatus: the container's status (verbose: crisp's own view of it as JSON)."""

from __future__ import annotations

import json

from google.protobuf import json_format

from cri import api as cri
from cri.service.context import ServiceContext
from cri.status import container_status


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
