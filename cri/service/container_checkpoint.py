"""CheckpointContainer: a running container dumped by CRIU into a checkpoint archive at the request's location,
left running (cri/lifecycle/checkpoints.py). The location must be an absolute path whose directory exists."""

from __future__ import annotations

import posixpath

from cri import api as cri
from cri.service.context import ServiceContext
from runtime import errors


async def checkpoint_container(ctx: ServiceContext, request: cri.CheckpointContainerRequest
                               ) -> cri.CheckpointContainerResponse:
    location = request.location
    if not location or not posixpath.isabs(location):
        raise errors.InvalidArgument(f"location {location!r}: an absolute path of the archive to write is needed")
    container = ctx.containers.get(request.container_id)
    handler = ctx.handlers.resolve(container.meta.handler)
    await ctx.checkpoints.checkpoint(container, handler, posixpath.normpath(location),
                                     float(request.timeout))
    return cri.CheckpointContainerResponse()
