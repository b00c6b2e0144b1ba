"""ReopenContainerLog: the shim reopens the container's CRI log file (after the kubelet rotated it)."""

from __future__ import annotations

from cri import api as cri
from cri.service.context import ServiceContext
from cri.store.containers import RUNNING
from runtime import errors


async def reopen_container_log(ctx: ServiceContext, request: cri.ReopenContainerLogRequest
                               ) -> cri.ReopenContainerLogResponse:
    container = ctx.containers.get(request.container_id)
    if container.status.state != RUNNING:
        raise errors.FailedPrecondition(f"container {container.id} is not running: its log is closed")
    await ctx.shims.client(container.id).reopen_log()
    return cri.ReopenContainerLogResponse()
