"""Taking a pod down: shared by StopPodSandbox, RemovePodSandbox and RunPodSandbox's rollback."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from cri.network import pod_network_request
from cri.service.context import ServiceContext
from cri.store.sandboxes import Sandbox
from runtime.cgroups import paths as cgroup_paths
from runtime.mounts import unmount
from runtime.namespaces.pidns import remove_pid_pin, stop_pod_init
from runtime.namespaces.pin import unpin_namespaces
from runtime.procs import ProcessRef

log = logging.getLogger(__name__)


async def remove_pod_init(ctx: ServiceContext, ref: ProcessRef | None, pin: Path, pod_cgroup: str,
                          sandbox_id: str) -> None:
    """Kill the pod's PID 1 (every process of its PID namespace dies with it), unpin, remove its cgroup leaf."""
    await stop_pod_init(ref)
    await remove_pid_pin(pin)
    await ctx.cgroup_driver.remove_leaf(ctx.cgroup_driver.leaf_path(pod_cgroup, sandbox_id))


async def kill_pod_processes(ctx: ServiceContext, sandbox: Sandbox) -> None:
    """SIGKILL whatever still runs in the pod: its PID 1 (if any) and every crisp leaf of the pod cgroup."""
    ref = sandbox.status.pod_init_ref()
    if ref is not None:
        await stop_pod_init(ref)
    manager = ctx.cgroup_manager()

    def kill_leaves() -> None:
        pod = manager.cgroup(sandbox.meta.cgroup)
        if not pod.exists():
            return
        for child in pod.children():
            if child.startswith(cgroup_paths.CONTAINER_PREFIX):
                leaf = manager.cgroup(cgroup_paths.join(sandbox.meta.cgroup, child))
                if leaf.created_by_crisp():
                    leaf.kill()

    await asyncio.to_thread(kill_leaves)


async def teardown_pod_network(ctx: ServiceContext, sandbox: Sandbox) -> None:
    """Detach the pod from the pod network (idempotent; works with the netns already gone)."""
    if sandbox.meta.host_network or ctx.network is None:
        return
    netns = sandbox.meta.namespaces.get("net", "")
    if netns and not await asyncio.to_thread(Path(netns).exists):
        netns = ""
    await ctx.network.teardown(pod_network_request(sandbox.id, netns, sandbox.meta.config))


async def release_pod_resources(ctx: ServiceContext, sandbox: Sandbox) -> None:
    """Unmount and delete everything the pod holds on the host (idempotent; missing pieces are fine)."""
    meta = sandbox.meta
    pod_dir = Path(meta.dir)
    if not meta.host_ipc:
        await unmount(pod_dir / "shm")
    pid_pin = meta.namespaces.get("pid")
    if pid_pin is not None:
        await remove_pod_init(ctx, sandbox.status.pod_init_ref(), Path(pid_pin), meta.cgroup, meta.id)
    await unpin_namespaces(Path(p) for kind, p in meta.namespaces.items() if kind != "pid")
    await ctx.cgroup_driver.remove_pod_cgroup(meta.cgroup)
    await asyncio.to_thread(shutil.rmtree, pod_dir, True)
