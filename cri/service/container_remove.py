"""RemoveContainer: force-stopped, its row and name gone (the answer), then deleted by its shim and its cgroup and
dirs gone, from a journal entry (cri/lifecycle/containers.py); idempotent, an unknown container is OK."""

from __future__ import annotations

import logging

from cri import api as cri
from cri.service.context import ServiceContext

log = logging.getLogger(__name__)


async def remove_container(ctx: ServiceContext, request: cri.RemoveContainerRequest) -> cri.RemoveContainerResponse:
    container = ctx.containers.find(request.container_id)
    if container is None:
        log.debug("RemoveContainer %s: no such container, nothing to do", request.container_id)
        return cri.RemoveContainerResponse()
    await ctx.container_control.remove(container)
    return cri.RemoveContainerResponse()
