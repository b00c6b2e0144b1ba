"""StopContainer: the stop signal, the grace period, SIGKILL; idempotent, an unknown container is OK."""

from __future__ import annotations

import logging

from cri import api as cri
from cri.service.context import ServiceContext

log = logging.getLogger(__name__)


async def stop_container(ctx: ServiceContext, request: cri.StopContainerRequest) -> cri.StopContainerResponse:
    container = ctx.containers.find(request.container_id)
    if container is None:
        log.debug("StopContainer %s: no such container, nothing to do", request.container_id)
        return cri.StopContainerResponse()
    await ctx.container_control.stop(container, request.timeout)
    return cri.StopContainerResponse()
