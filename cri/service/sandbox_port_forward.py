"""PortForward: a one-time URL of the streaming server for forwarding ports of a ready pod."""

from __future__ import annotations

import logging

from cri import api as cri
from cri.service.context import ServiceContext
from cri.streaming.containers import ready_sandbox
from cri.streaming.requests import PortForwardRequest
from runtime import errors

log = logging.getLogger(__name__)


async def port_forward(ctx: ServiceContext, request: cri.PortForwardRequest) -> cri.PortForwardResponse:
    if not request.pod_sandbox_id:
        raise errors.InvalidArgument("PortForward needs a pod sandbox id")
    for port in request.port:
        if not 0 < port < 65536:
            raise errors.InvalidArgument(f"PortForward: {port} is not a TCP port")
    sandbox = ready_sandbox(ctx.sandboxes, request.pod_sandbox_id)
    url = ctx.streaming.url_for(PortForwardRequest(sandbox_id=sandbox.id, ports=tuple(request.port)))
    log.debug("pod %s: port-forward at %s", sandbox.id, url)
    return cri.PortForwardResponse(url=url)
