"""RuntimeConfig: the cgroup driver the kubelet is to use (what `[cgroup] driver` says)."""

from __future__ import annotations

from cri import api as cri
from cri.service.context import ServiceContext


async def runtime_config(ctx: ServiceContext, request: cri.RuntimeConfigRequest) -> cri.RuntimeConfigResponse:
    driver = cri.SYSTEMD if ctx.config.cgroup.driver == "systemd" else cri.CGROUPFS
    return cri.RuntimeConfigResponse(linux=cri.LinuxRuntimeConfiguration(cgroup_driver=driver))
