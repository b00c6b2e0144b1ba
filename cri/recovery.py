"""What crispd does at start, before it serves: rebuild its caches from the store and reconcile with reality."""

from __future__ import annotations

import logging

from cri.service.context import ServiceContext
from cri.store.sandboxes import NOT_READY, READY

log = logging.getLogger(__name__)


async def recover(ctx: ServiceContext) -> None:
    await ctx.sandbox_names.load()
    for sandbox in await ctx.sandboxes.load():
        ref = sandbox.status.pod_init_ref()
        if sandbox.status.state == READY and ref is not None and not ref.alive():
            # its PID namespace died with its init (a reboot, or someone killed it): the pod is not ready
            log.warning("pod %s: its init (pid %d) is gone; marking the pod not ready", sandbox.id, ref.pid)
            await ctx.sandboxes.update(sandbox, state=NOT_READY)
    log.info("recovered %d pods", len(ctx.sandboxes.all()))
