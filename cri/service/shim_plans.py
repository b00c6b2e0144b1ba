"""How a container's shim is spawned and its container created (`ShimPlan`), from this crispd's config: the one home
for it, used by CreateContainer, which spawns the shim, and by StartContainer, which spawns it again if it is gone
(crispd restarted, the host rebooted) before it has the executor create the container."""

from __future__ import annotations

from pathlib import Path

from cri import api as cri
from cri.lifecycle.containers import ShimPlan
from cri.service.context import ServiceContext
from runtime import failpoints
from runtime.cgroups import paths as cgroup_paths
from shim.protocol import ShimConfig


def shim_plan(ctx: ServiceContext, container_id: str, bundle: Path, handler_name: str, log_path: str,
              config: cri.ContainerConfig, cgroup: str) -> ShimPlan:
    """How the container's shim is spawned and its container created, with this crispd's config: at
    CreateContainer, and again at StartContainer if the shim is gone by then (crispd restarted, the host rebooted)."""
    handler = ctx.handlers.resolve(handler_name)
    manager = ctx.cgroup_manager()
    builtin = handler.kind == "builtin"
    return ShimPlan(config=ShimConfig(
        id=container_id, bundle=str(bundle), executor=[*handler.argv, *ctx.cgroup_driver.executor_flags()],
        executor_root=str(handler.root), resident=len(handler.argv) if builtin else 0,
        log_path=log_path, log_max_line=ctx.config.shim.log_max_line_bytes, stdin=config.stdin,
        stdin_once=config.stdin_once, mount_rootfs=handler.kind == "oci",
        cgroup2_mount=str(manager.mount), cgroup=cgroup,
        cgroup2_bind=cgroup_paths.oci_runtime_bind(manager.mount) if handler.kind == "oci" else "",
        hang_points=[p for p in ctx.config.debug.hang_points if failpoints.operation_of(p) == "shim"]),
        hold=builtin)
