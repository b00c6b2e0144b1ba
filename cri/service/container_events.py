"""GetContainerEvents: a stream of container (and pod) state changes for the kubelet's evented PLEG.

Each event carries the pod's status and the statuses of all its containers at the time of the change, which is
what the kubelet builds its pod status from. Pods send events too, with the pod id as the container id (created
and started when RunPodSandbox is done, stopped, deleted), as containerd does. The fan-out is `cri.events`.
"""

from __future__ import annotations

from typing import Any

from cri import api as cri
from cri.service.container_status import pod_container_statuses
from cri.service.context import ServiceContext
from cri.service.sandbox_status import sandbox_status
from cri.store.sandboxes import Sandbox


def event_response(ctx: ServiceContext, container_id: str, sandbox_id: str, event_type: int,
                   sandbox: Sandbox | None = None) -> cri.ContainerEventResponse:
    """The event as the kubelet wants it; a removed pod is described by the object the caller still holds."""
    pod = sandbox if sandbox is not None else ctx.sandboxes.find(sandbox_id)
    response = cri.ContainerEventResponse(
        container_id=container_id, container_event_type=event_type,  # type: ignore[arg-type]
        created_at=ctx.clock_ns(), containers_statuses=pod_container_statuses(ctx, sandbox_id))
    if pod is not None:
        response.pod_sandbox_status.CopyFrom(sandbox_status(pod))
    return response


async def get_container_events(ctx: ServiceContext, request: cri.GetEventsRequest, context: Any) -> None:
    """Every event from now on, until the client goes away, crispd stops (UNAVAILABLE), or this subscriber falls
    too far behind (RESOURCE_EXHAUSTED). Written with `context.write`, so that a write the client never takes can
    be given up."""
    subscription = ctx.events.subscribe()
    try:
        while True:
            event = await subscription.next()
            await subscription.send(context.write(event))
    finally:
        subscription.close()
