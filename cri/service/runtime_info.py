"""Version, Status, RuntimeConfig and UpdateRuntimeConfig."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from cri import api as cri
from cri.config import redacted
from cri.network import POD_CIDR_SETTING, effective_pod_cidr, network_ready_condition
from cri.service.context import ServiceContext
from runtime import errors
from runtime.executor import handlers
from runtime.network import ipam
from runtime.network.types import NOT_READY_REASON, NetworkStatus
from runtime.version import VERSION

log = logging.getLogger(__name__)

RUNTIME_NAME = "crisp"
CRI_API_VERSION = "v1"
# the CRI's own Version RPC version field is the kubelet-facing API version, kept at 0.1.0 by every runtime
KUBELET_API_VERSION = "0.1.0"


async def version(ctx: ServiceContext, request: cri.VersionRequest) -> cri.VersionResponse:
    return cri.VersionResponse(
        version=KUBELET_API_VERSION,
        runtime_name=RUNTIME_NAME,
        runtime_version=VERSION,
        runtime_api_version=CRI_API_VERSION,
    )


def handler_names(ctx: ServiceContext) -> list[str]:
    """The CRI runtime handlers crisp serves: the built-in default "" first, then the configured ones."""
    return ["", *sorted(ctx.config.runtime.handlers)]


def runtime_handler(ctx: ServiceContext, name: str) -> handlers.Handler:
    """The executor for a CRI runtime_handler (RunPodSandbox, CreateContainer); unknown -> INVALID_ARGUMENT."""
    return handlers.resolve_handler(name, ctx.config.runtime.handlers, Path(ctx.config.state))


def handler_features(ctx: ServiceContext, name: str) -> handlers.HandlerFeatures:
    """What a handler's executor really does (blocking: its `--version`, cached per binary)."""
    return handlers.handler_features(runtime_handler(ctx, name))


def _probe_handler_features(ctx: ServiceContext) -> list[tuple[str, handlers.HandlerFeatures]]:
    """Blocking (a handler's `--version`, once per binary): runs in a worker thread."""
    out = []
    for name in handler_names(ctx):
        try:
            features = handlers.handler_features(runtime_handler(ctx, name))
        except errors.CrispError as exc:
            log.warning("runtime handler %r: %s", name, exc)
            features = handlers.HandlerFeatures()
        out.append((name, features))
    return out


async def _runtime_handlers(ctx: ServiceContext) -> list[cri.RuntimeHandler]:
    probed = await asyncio.to_thread(_probe_handler_features, ctx)
    return [
        cri.RuntimeHandler(name=name, features=cri.RuntimeHandlerFeatures(
            recursive_read_only_mounts=features.recursive_read_only_mounts,
            user_namespaces=features.user_namespaces,
        ))
        for name, features in probed
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
        info = {
            "config": redacted(ctx.config),
            "version": {"runtimeName": RUNTIME_NAME, "runtimeVersion": VERSION,
                        "runtimeApiVersion": CRI_API_VERSION, "criApiRelease": cri.CRI_API_VERSION},
            "podCIDR": await effective_pod_cidr(ctx.config, ctx.store),
            "nri": ctx.nri.status(),
        }
        for key, value in info.items():
            response.info[key] = json.dumps(value, sort_keys=True)
    return response


async def runtime_config(ctx: ServiceContext, request: cri.RuntimeConfigRequest) -> cri.RuntimeConfigResponse:
    driver = cri.SYSTEMD if ctx.config.cgroup.driver == "systemd" else cri.CGROUPFS
    return cri.RuntimeConfigResponse(linux=cri.LinuxRuntimeConfiguration(cgroup_driver=driver))


def parse_pod_cidrs(value: str) -> list[str]:
    """A kubelet pod CIDR: one network or a comma-separated dual-stack pair (the pod network's own rules)."""
    return [str(subnet) for subnet in ipam.parse_pod_cidrs(value)]


async def update_runtime_config(
    ctx: ServiceContext, request: cri.UpdateRuntimeConfigRequest
) -> cri.UpdateRuntimeConfigResponse:
    pod_cidr = request.runtime_config.network_config.pod_cidr
    if pod_cidr:
        normalized = ",".join(parse_pod_cidrs(pod_cidr))
        await ctx.store.set_setting(POD_CIDR_SETTING, normalized)
        log.info("pod CIDR set to %s", normalized)
    return cri.UpdateRuntimeConfigResponse()
