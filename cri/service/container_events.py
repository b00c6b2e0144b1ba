"""GetContainerEvents: a stream of container (and pod) state changes for the kubelet's evented PLEG.

Each event carries the pod's status and the statuses of all its containers at the time of the change, which is
what the kubelet builds its pod status from; the publishing side is cri/events.py.
"""

from __future__ import annotations

from typing import Any

from cri import api as cri
from cri.service.context import ServiceContext


async def get_container_events(ctx: ServiceContext, request: cri.GetEventsRequest, context: Any) -> None:
    """Every event from now on, until the client goes away, crispd stops (UNAVAILABLE), or this subscriber falls
    too far behind (RESOURCE_EXHAUSTED). Written with `context.write`, so that a write the client never takes can
    be given up."""
    subscription = ctx.events.broker.subscribe()
    try:
        while True:
            event = await subscription.next()
            await subscription.send(context.write(event))
    finally:
        subscription.close()
