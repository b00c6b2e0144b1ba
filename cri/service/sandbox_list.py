"""ListPodSandbox: the pods that match the filter (id prefix, state, labels), oldest first."""

from __future__ import annotations

from cri import api as cri
from cri.service.context import ServiceContext
from cri.status import sandbox_state
from cri.store.sandboxes import Sandbox


def _matches(sandbox: Sandbox, flt: cri.PodSandboxFilter) -> bool:
    if flt.id and not sandbox.id.startswith(flt.id):
        return False
    if flt.HasField("state") and sandbox_state(sandbox) != flt.state.state:
        return False
    labels = sandbox.meta.config.labels
    return all(labels.get(k) == v for k, v in flt.label_selector.items())


def _summary(sandbox: Sandbox) -> cri.PodSandbox:
    config = sandbox.meta.config
    return cri.PodSandbox(id=sandbox.id, metadata=config.metadata, state=sandbox_state(sandbox),
                          created_at=sandbox.meta.created_at, labels=config.labels,
                          annotations=config.annotations, runtime_handler=sandbox.meta.runtime_handler)


async def list_pod_sandbox(ctx: ServiceContext, request: cri.ListPodSandboxRequest) -> cri.ListPodSandboxResponse:
    sandboxes = [s for s in ctx.sandboxes.all() if _matches(s, request.filter)]
    sandboxes.sort(key=lambda s: s.meta.created_at)
    return cri.ListPodSandboxResponse(items=[_summary(s) for s in sandboxes])
