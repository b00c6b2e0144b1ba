"""CheckpointContainer: a running container dumped by CRIU into a checkpoint archive at the request's location,
left running (cri/lifecycle/checkpoints.py): by crispd's own CRIU call for the built-in executor, by the runtime's
`checkpoint` for an OCI runtime handler. The location must be an absolute path whose directory exists."""

from __future__ import annotations

import posixpath

from cri import api as cri
from cri.service.context import ServiceContext
from runtime import errors
from runtime.bundle import executor_argv
from runtime.cgroups import paths as cgroup_paths


async def checkpoint_container(ctx: ServiceContext, request: cri.CheckpointContainerRequest
                               ) -> cri.CheckpointContainerResponse:
    location = request.location
    if not location or not posixpath.isabs(location):
        raise errors.InvalidArgument(f"location {location!r}: an absolute path of the archive to write is needed")
    container = ctx.containers.get(request.container_id)
    handler = ctx.handlers.resolve(container.meta.handler)
    runtime: list[str] = []
    if handler.kind == "oci":  # its command line as the shim runs it (container_create.shim_plan)
        runtime = executor_argv([*handler.argv, *ctx.cgroup_driver.executor_flags()], str(handler.root),
                                cgroup2_bind=cgroup_paths.oci_runtime_bind(ctx.cgroup_manager().mount))
    await ctx.checkpoints.checkpoint(container, handler, posixpath.normpath(location), float(request.timeout),
                                     runtime)
    return cri.CheckpointContainerResponse()
