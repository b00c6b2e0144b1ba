"""What crispd does at start, before it serves: rebuild its caches from the store and reconcile with reality."""

from __future__ import annotations

import asyncio
import logging

from cri.service.context import ServiceContext
from cri.store.containers import EXITED, RUNNING
from cri.store.sandboxes import NOT_READY, READY
from runtime import errors
from runtime.fstree import remove_tree
from runtime.network.types import PodNetworkRequest
from shim.protocol import ExitStatus

log = logging.getLogger(__name__)


async def recover_containers(ctx: ServiceContext) -> None:
    """Reconnect to every live shim; a container whose process is gone gets its real exit status (from the
    shim's status file) or, if nothing is known, exit code 255 with a reason."""
    await ctx.container_names.load()
    containers = {c.id: c for c in await ctx.containers.load()}
    found = {shim.id: shim for shim in await ctx.shims.recover()}
    for container_id, shim in found.items():
        if container_id not in containers:
            # crispd died while creating it (or after removing its row): nothing refers to it any more
            log.info("container %s: removing the leftovers of a container crisp has no record of", container_id)
            if shim.info is not None:
                try:
                    await ctx.shims.discard(container_id)
                except errors.CrispError as exc:
                    # its bundle (shim.json) is the record of what is left: kept for the next start to try again
                    log.warning("container %s: cannot remove its leftovers yet: %s", container_id, exc)
                    continue
            await asyncio.to_thread(remove_tree, shim.bundle, True)
            await asyncio.to_thread(remove_tree, ctx.root_dir / "containers" / container_id, True)
    for container in containers.values():
        if container.status.state == EXITED:
            continue
        recovered = found.get(container.id)
        if recovered is not None and recovered.client is not None:
            state = await recovered.client.state()
            if state.status is not None:
                await ctx.container_control.record_exit(container, state.status)
            elif container.status.state == RUNNING or state.state == "running":
                if container.status.state != RUNNING:
                    await ctx.containers.update(container, state=RUNNING, started_at=state.started_at)
                ctx.container_control.watch(container)
            continue
        status = recovered.status if recovered is not None else None
        if status is None:
            status = ExitStatus(exit_code=255, reason="Unknown",
                                message="the container's shim is gone and left no exit status")
        await ctx.container_control.record_exit(container, status)
    log.info("recovered %d containers (%d with a live shim)", len(containers),
             sum(1 for s in found.values() if s.client is not None))


async def recover(ctx: ServiceContext) -> None:
    await ctx.sandbox_names.load()
    for sandbox in await ctx.sandboxes.load():
        ref = sandbox.status.pod_init_ref()
        if sandbox.status.state == READY and ref is not None and not ref.alive():
            # its PID namespace died with its init (a reboot, or someone killed it): the pod is not ready
            log.warning("pod %s: its init (pid %d) is gone; marking the pod not ready", sandbox.id, ref.pid)
            await ctx.sandboxes.update(sandbox, state=NOT_READY)
    await recover_containers(ctx)
    if ctx.network is not None:
        known = {s.id for s in ctx.sandboxes.all()}
        for sandbox_id in await ctx.network.attached_sandboxes() - known:
            # a pod whose record is gone (it was removed while its network teardown failed, or crispd died
            # half way through creating it): give back what it holds
            log.info("pod %s: removing its leftover network attachment", sandbox_id)
            await ctx.network.teardown(PodNetworkRequest(sandbox_id=sandbox_id, netns=""))
    log.info("recovered %d pods", len(ctx.sandboxes.all()))
