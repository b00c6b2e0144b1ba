"""ListPodSandboxMetrics: cAdvisor's container metrics of every ready pod and its containers (cri/pod_metrics.py),
so that the kubelet's /metrics/cadvisor can come from the runtime alone."""

from __future__ import annotations

from cri import api as cri
from cri.pod_metrics import pod_sandbox_metrics
from cri.service.context import ServiceContext
from cri.usage import forget_removed


async def list_pod_sandbox_metrics(ctx: ServiceContext, request: cri.ListPodSandboxMetricsRequest
                                   ) -> cri.ListPodSandboxMetricsResponse:
    metrics = await pod_sandbox_metrics(ctx.stats, ctx.sandboxes, ctx.containers, ctx.clock_ns())
    forget_removed(ctx.stats, ctx.containers, ctx.sandboxes)
    return cri.ListPodSandboxMetricsResponse(pod_metrics=metrics)
