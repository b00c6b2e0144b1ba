"""Attach: a one-time URL of the streaming server for the streams of a running container's init."""

from __future__ import annotations

import logging

from cri import api as cri
from cri.service.context import ServiceContext
from cri.streaming.containers import check_stdio, running_container
from cri.streaming.requests import AttachRequest
from runtime import errors

log = logging.getLogger(__name__)


async def attach(ctx: ServiceContext, request: cri.AttachRequest) -> cri.AttachResponse:
    if not request.container_id:
        raise errors.InvalidArgument("Attach needs a container id")
    check_stdio("Attach", request.tty, request.stdin, request.stdout, request.stderr)
    container = running_container(ctx.containers, request.container_id)
    if request.stdin and not container.meta.config.stdin:
        raise errors.FailedPrecondition(f"container {container.id} was not created with stdin: cannot attach to it")
    if request.tty != container.meta.config.tty:
        raise errors.InvalidArgument(f"container {container.id} {'has' if container.meta.config.tty else 'has no'} "
                                     f"terminal, the attach asks for tty={request.tty}")
    url = ctx.streaming.url_for(AttachRequest(
        container_id=container.id, tty=request.tty, stdin=request.stdin, stdout=request.stdout,
        stderr=request.stderr))
    log.debug("container %s: attach at %s", container.id, url)
    return cri.AttachResponse(url=url)
