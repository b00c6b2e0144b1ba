"""What crispd does at start, before it serves: rebuild its caches from the store and reconcile with reality."""

from __future__ import annotations

import logging

from cri.service.context import ServiceContext
from cri.store.sandboxes import NOT_READY, READY
from runtime.network.types import PodNetworkRequest

log = logging.getLogger(__name__)


async def recover(ctx: ServiceContext) -> None:
    await ctx.sandbox_names.load()
    for sandbox in await ctx.sandboxes.load():
        ref = sandbox.status.pod_init_ref()
        if sandbox.status.state == READY and ref is not None and not ref.alive():
            # its PID namespace died with its init (a reboot, or someone killed it): the pod is not ready
            log.warning("pod %s: its init (pid %d) is gone; marking the pod not ready", sandbox.id, ref.pid)
            await ctx.sandboxes.update(sandbox, state=NOT_READY)
    if ctx.network is not None:
        known = {s.id for s in ctx.sandboxes.all()}
        for sandbox_id in await ctx.network.attached_sandboxes() - known:
            # a pod whose record is gone (it was removed while its network teardown failed, or crispd died
            # half way through creating it): give back what it holds
            log.info("pod %s: removing its leftover network attachment", sandbox_id)
            await ctx.network.teardown(PodNetworkRequest(sandbox_id=sandbox_id, netns=""))
    log.info("recovered %d pods", len(ctx.sandboxes.all()))
