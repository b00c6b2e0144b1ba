"""UpdateRuntimeConfig: the kubelet's pod CIDR (one network or a dual-stack pair), kept for the pod network."""

from __future__ import annotations

import logging

from cri import api as cri
from cri.network import POD_CIDR_SETTING
from cri.service.context import ServiceContext
from runtime.network import ipam

log = logging.getLogger(__name__)


async def update_runtime_config(ctx: ServiceContext, request: cri.UpdateRuntimeConfigRequest
                                ) -> cri.UpdateRuntimeConfigResponse:
    pod_cidr = request.runtime_config.network_config.pod_cidr
    if pod_cidr:
        normalized = ",".join(str(subnet) for subnet in ipam.parse_pod_cidrs(pod_cidr))
        await ctx.store.set_setting(POD_CIDR_SETTING, normalized)
        log.info("pod CIDR set to %s", normalized)
    return cri.UpdateRuntimeConfigResponse()
