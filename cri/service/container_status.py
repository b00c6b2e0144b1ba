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
        if container.status.dropped_limits:
            # asked for, but not in force: this node's cgroup v2 lacks their controllers and the config says "warn"
            info["droppedLimits"] = {
                "limits": container.status.dropped_limits,
                "reason": "this node's cgroup v2 lacks the controllers these limits need, and "
                          f'cgroup.missing_controller = "{ctx.config.cgroup.missing_controller}" runs the container '
                          "without them"}
        response.info["info"] = json.dumps(info, sort_keys=True)
    return response
