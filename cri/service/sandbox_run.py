"""RunPodSandbox: check the request, reserve the pod's name, and have the pod-sandbox controller make the pod.

The pod is made to its end even if the kubelet gives up waiting; its retry of the same name then gets this pod's
id (cri/lifecycle/creations.py). A request that is wrong is refused before anything is made.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from cri import api as cri
from cri import metadata_limits
from cri.oci.userns import pod_userns
from cri.service.context import ServiceContext
from runtime import errors

log = logging.getLogger(__name__)


def sandbox_name(metadata: cri.PodSandboxMetadata) -> str:
    return f"{metadata.name}_{metadata.namespace}_{metadata.uid}_{metadata.attempt}"


def _validate(config: cri.PodSandboxConfig) -> None:
    meta = config.metadata
    if not config.HasField("metadata") or not meta.name or not meta.namespace or not meta.uid:
        raise errors.InvalidArgument("pod sandbox metadata needs a name, a namespace and a uid")
    for field_name, value in (("name", meta.name), ("namespace", meta.namespace), ("uid", meta.uid)):
        if "/" in value or "\0" in value or ("_" in value and field_name == "uid"):
            raise errors.InvalidArgument(f"pod sandbox metadata {field_name} {value!r} contains a bad character")
    ns = config.linux.security_context.namespace_options
    if ns.pid == cri.TARGET:
        raise errors.InvalidArgument("a pod sandbox cannot use a TARGET PID namespace (only a container can)")
    if config.log_directory and not config.log_directory.startswith("/"):
        raise errors.InvalidArgument(f"log_directory {config.log_directory!r} must be an absolute path")


async def run_pod_sandbox(ctx: ServiceContext, request: cri.RunPodSandboxRequest, context: Any = None
                          ) -> cri.RunPodSandboxResponse:
    config = request.config
    _validate(config)
    handler = request.runtime_handler
    if handler not in ctx.handlers.names():
        raise errors.InvalidArgument(f"unknown runtime handler {handler!r}")
    if pod_userns(config.linux.security_context.namespace_options) is not None:
        features = await ctx.handlers.features(handler)
        if not features.user_namespaces:
            raise errors.FailedPrecondition(f"runtime handler {handler!r} does not support user namespaces on this "
                                            "host (Status lists each handler's features)")
    name = sandbox_name(config.metadata)
    earlier = await ctx.creations.abandoned_result(ctx.sandbox_names, name)
    if earlier is not None:
        log.info("RunPodSandbox %s: returning pod %s, made for an earlier call that never got its answer", name,
                 earlier)
        return cri.RunPodSandboxResponse(pod_sandbox_id=earlier)
    metadata_limits.check(f"pod {name}", metadata_limits.pod_bytes(config),
                          metadata_limits.node_bytes(ctx.sandboxes.all(), ctx.containers.all()),
                          ctx.config.limits.metadata_budget_bytes)
    sandbox_id = secrets.token_hex(32)
    plan = ctx.sandbox_control.plan(sandbox_id, name, config, handler)
    await ctx.sandbox_names.reserve(name, sandbox_id, ctx.clock_ns(), plan.intent())
    await ctx.creations.run_to_the_end("pod", ctx.sandbox_names, name, sandbox_id, ctx.sandbox_control.run(plan),
                                       context)
    return cri.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)
