"""StopPodSandbox: everything in the pod killed, its network torn down; idempotent, an unknown pod is OK."""

from __future__ import annotations

import logging

from cri import api as cri
from cri.service.context import ServiceContext

log = logging.getLogger(__name__)


async def stop_pod_sandbox(ctx: ServiceContext, request: cri.StopPodSandboxRequest) -> cri.StopPodSandboxResponse:
    sandbox = ctx.sandboxes.find(request.pod_sandbox_id)
    if sandbox is None:
        log.debug("StopPodSandbox %s: no such pod, nothing to do", request.pod_sandbox_id)
        return cri.StopPodSandboxResponse()
    await ctx.sandbox_control.stop(sandbox)
    return cri.StopPodSandboxResponse()
