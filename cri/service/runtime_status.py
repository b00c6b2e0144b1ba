"""Status: the runtime and network conditions, the runtime handlers and their features (verbose: the config)."""

from __future__ import annotations

import json

from cri import api as cri
from cri.config import redacted
from cri.network import effective_pod_cidr, network_ready_condition
from cri.service.context import ServiceContext
from runtime.network.types import NOT_READY_REASON, NetworkStatus
from runtime.version import RUNTIME_NAME, VERSION


async def _runtime_handlers(ctx: ServiceContext) -> list[cri.RuntimeHandler]:
    return [
        cri.RuntimeHandler(name=name, features=cri.RuntimeHandlerFeatures(
            recursive_read_only_mounts=features.recursive_read_only_mounts,
            user_namespaces=features.user_namespaces,
        ))
        for name, features in await ctx.handlers.probe()
    ]


async def status(ctx: ServiceContext, request: cri.StatusRequest) -> cri.StatusResponse:
    runtime_ready = cri.RuntimeCondition(type="RuntimeReady", status=True, reason="", message="")
    if ctx.network is None:
        network_status = NetworkStatus(False, NOT_READY_REASON, "crisp: no pod network is configured")
    else:
        network_status = await ctx.network.status()
    network_ready = network_ready_condition(network_status)
    response = cri.StatusResponse(
        status=cri.RuntimeStatus(conditions=[runtime_ready, network_ready]),
        runtime_handlers=await _runtime_handlers(ctx),
        # cri/oci resolves SupplementalGroupsPolicy (Merge/Strict) and every executor applies additionalGids
        features=cri.RuntimeFeatures(supplemental_groups_policy=True),
    )
    if request.verbose:
        # critest (and containerd's readers) look for the state dir as config.stateDir
        info = {
            "config": {**redacted(ctx.config), "stateDir": str(ctx.state_dir)},
            "version": {"runtimeName": RUNTIME_NAME, "runtimeVersion": VERSION,
                        "runtimeApiVersion": cri.RUNTIME_API_VERSION, "criApiRelease": cri.CRI_API_VERSION},
            "podCIDR": await effective_pod_cidr(ctx.config, ctx.store),
            "nri": ctx.nri.status(),
        }
        for key, value in info.items():
            response.info[key] = json.dumps(value, sort_keys=True)
    return response
