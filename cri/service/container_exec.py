"""Exec: a one-time URL of the streaming server for a command in a running container (run through its shim)."""

from __future__ import annotations

import logging

from cri import api as cri
from cri.service.context import ServiceContext
from cri.streaming.containers import check_stdio, running_container
from cri.streaming.requests import ExecRequest
from runtime import errors

log = logging.getLogger(__name__)


async def exec_rpc(ctx: ServiceContext, request: cri.ExecRequest) -> cri.ExecResponse:
    if not request.container_id:
        raise errors.InvalidArgument("Exec needs a container id")
    if not request.cmd:
        raise errors.InvalidArgument("Exec needs a command")
    check_stdio("Exec", request.tty, request.stdin, request.stdout, request.stderr)
    container = running_container(ctx.containers, request.container_id)
    url = ctx.streaming.url_for(ExecRequest(
        container_id=container.id, cmd=tuple(request.cmd), tty=request.tty, stdin=request.stdin,
        stdout=request.stdout, stderr=request.stderr))
    log.debug("container %s: exec %s at %s", container.id, list(request.cmd), url)
    return cri.ExecResponse(url=url)
