"""RemovePodSandbox: the pod stopped, its containers removed, everything it held given back; idempotent, an
unknown pod is OK."""

from __future__ import annotations

import logging

from cri import api as cri
from cri.service.context import ServiceContext

log = logging.getLogger(__name__)


async def remove_pod_sandbox(ctx: ServiceContext, request: cri.RemovePodSandboxRequest
                             ) -> cri.RemovePodSandboxResponse:
    sandbox = ctx.sandboxes.find(request.pod_sandbox_id)
    if sandbox is None:
        log.debug("RemovePodSandbox %s: no such pod, nothing to do", request.pod_sandbox_id)
        return cri.RemovePodSandboxResponse()
    await ctx.sandbox_control.remove(sandbox)
    return cri.RemovePodSandboxResponse()
