"""ListMetricDescriptors: the descriptors of the metrics ListPodSandboxMetrics reports (cAdvisor's)."""

from __future__ import annotations

from cri import api as cri
from cri.pod_metrics import DESCRIPTORS
from cri.service.context import ServiceContext


async def list_metric_descriptors(ctx: ServiceContext, request: cri.ListMetricDescriptorsRequest
                                  ) -> cri.ListMetricDescriptorsResponse:
    return cri.ListMetricDescriptorsResponse(descriptors=[d.message() for d in DESCRIPTORS])
