"""ExecSync: a command in a running container, with its identity; its output and exit code in the answer."""

from __future__ import annotations

from cri import api as cri
from cri.service.context import ServiceContext
from cri.store.containers import RUNNING
from runtime import errors

# the kubelet's CRI client refuses replies over 16 MiB: ExecSync output stays below that
MAX_EXEC_SYNC_OUTPUT = 16 * 1024 * 1024 - 64 * 1024


async def exec_sync(ctx: ServiceContext, request: cri.ExecSyncRequest) -> cri.ExecSyncResponse:
    container = ctx.containers.get(request.container_id)
    if container.status.state != RUNNING:
        raise errors.FailedPrecondition(f"container {container.id} is not running")
    if not request.cmd:
        raise errors.InvalidArgument("ExecSync needs a command")
    result = await ctx.shims.client(container.id).exec_sync(
        list(request.cmd), exec_timeout=float(request.timeout), max_output=MAX_EXEC_SYNC_OUTPUT)
    if result.timed_out:
        raise errors.DeadlineExceeded(
            f"command {list(request.cmd)!r} in container {container.id} timed out after {request.timeout}s")
    return cri.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)
