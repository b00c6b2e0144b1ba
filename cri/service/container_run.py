"""StartContainer, StopContainer, RemoveContainer, and watching a container until it exits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal

from cri import api as cri
from cri.service.context import ServiceContext
from cri.store.containers import CREATED, RUNNING, Container
from runtime import errors
from shim.protocol import ExitStatus

log = logging.getLogger(__name__)

# after SIGKILL, how long the container may take to be reported gone
KILL_WAIT = 10.0


def exit_reason(status: ExitStatus) -> str:
    if status.oom_killed:
        return "OOMKilled"
    return "Completed" if status.exit_code == 0 else "Error"


async def record_exit(ctx: ServiceContext, container: Container, status: ExitStatus) -> None:
    """The container has exited: keep how, once (later reports of the same exit change nothing)."""
    message = status.message or (f"killed by signal {status.signal}" if status.signal else "")
    if not await ctx.containers.record_exit(
            container, exit_code=status.exit_code, finished_at=status.finished_at or ctx.clock_ns(),
            started_at=container.status.started_at or status.started_at, reason=status.reason or exit_reason(status),
            message=message):
        return
    log.info("container %s exited with %d (%s)", container.id, status.exit_code, container.status.reason)
    if status.oom_killed:
        ctx.metrics.oom_kills.inc()
    ctx.container_event(container, cri.CONTAINER_STOPPED_EVENT)


async def watch_exit(ctx: ServiceContext, container: Container) -> None:
    """Wait for the container to exit (through its shim, or its status file if the shim dies) and record it."""
    try:
        status = await ctx.shims.wait_exit(container.id)
    except errors.NotFound:
        status = ExitStatus(exit_code=255, reason="Unknown", message="crisp lost track of this container's shim")
    await record_exit(ctx, container, status)


def start_watching(ctx: ServiceContext, container: Container) -> None:
    ctx.spawn_background(f"exit watch {container.id}", watch_exit(ctx, container))


async def start_container(ctx: ServiceContext, request: cri.StartContainerRequest) -> cri.StartContainerResponse:
    container = ctx.containers.get(request.container_id)
    async with container.lock:
        if container.status.state != CREATED:
            raise errors.FailedPrecondition(
                f"container {container.id} is {container.status.state}: only a created container can be started")
        sandbox = ctx.sandboxes.find(container.meta.sandbox_id)
        if sandbox is None or sandbox.status.state != "ready":
            raise errors.FailedPrecondition(f"the pod of container {container.id} is not ready")
        client = ctx.shims.client(container.id)
        started_at = await client.start()
        await ctx.containers.update(container, state=RUNNING, started_at=started_at or ctx.clock_ns())
        start_watching(ctx, container)
    log.info("container %s started", container.id)
    ctx.container_event(container, cri.CONTAINER_STARTED_EVENT)
    return cri.StartContainerResponse()


async def stop_container(ctx: ServiceContext, request: cri.StopContainerRequest) -> cri.StopContainerResponse:
    container = ctx.containers.find(request.container_id)
    if container is None:
        log.debug("StopContainer %s: no such container, nothing to do", request.container_id)
        return cri.StopContainerResponse()
    async with container.lock:
        await stop(ctx, container, request.timeout)
    return cri.StopContainerResponse()


async def stop(ctx: ServiceContext, container: Container, grace: int) -> None:
    """Stop signal, up to `grace` seconds (0: at once) for the main process, then SIGKILL; then nothing of the
    container may stay (its cgroup is killed). A created or exited container is left as it is."""
    if container.status.state != RUNNING:
        return
    client = ctx.shims.client(container.id)
    if grace > 0:
        with contextlib.suppress(errors.NotFound, errors.FailedPrecondition, errors.Unavailable):
            await client.kill(container.meta.stop_signal)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(container.exited.wait(), grace)
    if not container.exited.is_set():
        with contextlib.suppress(errors.NotFound, errors.FailedPrecondition, errors.Unavailable):
            await client.kill(signal.SIGKILL, all=True)
        try:
            await asyncio.wait_for(container.exited.wait(), KILL_WAIT)
        except TimeoutError:
            raise errors.DeadlineExceeded(f"container {container.id} did not exit after SIGKILL") from None
    await kill_cgroup(ctx, container)
    log.info("container %s stopped", container.id)


async def kill_cgroup(ctx: ServiceContext, container: Container) -> None:
    """Whatever the container left behind (processes of a shared PID namespace) dies with its cgroup."""
    cgroup = ctx.cgroup_manager().cgroup(container.meta.cgroup)

    def kill() -> None:
        if cgroup.exists() and cgroup.created_by_crisp():
            cgroup.kill()

    await asyncio.to_thread(kill)


async def remove_container(ctx: ServiceContext, request: cri.RemoveContainerRequest
                           ) -> cri.RemoveContainerResponse:
    container = ctx.containers.find(request.container_id)
    if container is None:
        log.debug("RemoveContainer %s: no such container, nothing to do", request.container_id)
        return cri.RemoveContainerResponse()
    async with container.lock:
        await remove(ctx, container)
    return cri.RemoveContainerResponse()


async def remove(ctx: ServiceContext, container: Container) -> None:
    """Force-stop, let the shim delete the container and exit, remove dirs, row and name (idempotent)."""
    if ctx.containers.find(container.id) is None:
        return
    await stop(ctx, container, 0)
    await ctx.discard_shim(container.id)
    await ctx.cgroup_driver.remove_leaf(container.meta.cgroup)
    await ctx.cgroup_driver.shim_gone(container.id)

    def cleanup() -> None:
        shutil.rmtree(container.meta.bundle, ignore_errors=True)
        shutil.rmtree(container.meta.container_dir, ignore_errors=True)

    await asyncio.to_thread(cleanup)
    await ctx.containers.delete(container)
    await ctx.container_names.release(container.meta.name, container.id)
    log.info("container %s removed", container.id)
    ctx.container_event(container, cri.CONTAINER_DELETED_EVENT)


async def stop_pod_containers(ctx: ServiceContext, sandbox_id: str) -> None:
    for container in ctx.containers.of_sandbox(sandbox_id):
        async with container.lock:
            await stop(ctx, container, 0)


async def remove_pod_containers(ctx: ServiceContext, sandbox_id: str) -> None:
    for container in ctx.containers.of_sandbox(sandbox_id):
        async with container.lock:
            await remove(ctx, container)
