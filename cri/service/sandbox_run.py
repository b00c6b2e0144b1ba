"""RunPodSandbox: pinned namespaces, the pod cgroup, the pod's files and /dev/shm, its network.

No pause process and no sandbox image: the pod's network, IPC and UTS namespaces are created by a short-lived helper
and kept open by bind mounts under `<state>/sandboxes/<id>/ns`. Only a pod that shares its PID namespace gets a
process of its own (a PID 1 that reaps), in its own leaf of the pod cgroup. Every step registers its undo: a
failure anywhere leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import shutil
import time
from typing import Any

from cri import api as cri
from cri.network import pod_network_request
from cri.service import runtime_info
from cri.service.context import ServiceContext
from cri.service.sandbox_files import pod_hostname, write_pod_files
from cri.service.sandbox_teardown import remove_pod_init
from cri.store.sandboxes import READY, Sandbox, SandboxMeta, SandboxStatus
from runtime import errors
from runtime.mounts import mount_tmpfs, unmount
from runtime.namespaces.pidns import start_pod_init
from runtime.namespaces.pin import NamespaceSetup, pin_namespaces, unpin_namespaces
from runtime.namespaces.sysctl import check_pod_sysctls
from runtime.rollback import Rollback

log = logging.getLogger(__name__)

SHM_SIZE = 64 * 1024 * 1024
HOST_SHM = "/dev/shm"


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
    if ns.HasField("userns_options") and ns.userns_options.mode == cri.POD:
        raise errors.Unimplemented("user namespaces are not supported by crisp")


async def run_pod_sandbox(ctx: ServiceContext, request: cri.RunPodSandboxRequest, context: Any = None
                          ) -> cri.RunPodSandboxResponse:
    config = request.config
    _validate(config)
    handler = request.runtime_handler
    if handler not in runtime_info.handler_names(ctx):
        raise errors.InvalidArgument(f"unknown runtime handler {handler!r}")
    name = sandbox_name(config.metadata)
    earlier = ctx.abandoned_result(ctx.sandbox_names, name)
    if earlier is not None:
        log.info("RunPodSandbox %s: returning pod %s, created after an earlier caller gave up", name, earlier)
        return cri.RunPodSandboxResponse(pod_sandbox_id=earlier)
    sandbox_id = secrets.token_hex(32)
    if config.linux.security_context.namespace_options.network != cri.NODE:
        pod_network_request(sandbox_id, "", config)  # bad port mappings fail here, before anything is made
    await ctx.sandbox_names.reserve(name, sandbox_id, ctx.clock_ns())
    await ctx.create_to_the_end("pod", name, sandbox_id, _create(ctx, sandbox_id, name, config, handler), context)
    return cri.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)


async def _create(ctx: ServiceContext, sandbox_id: str, name: str, config: cri.PodSandboxConfig,
                  handler: str) -> None:
    linux = config.linux
    ns_options = linux.security_context.namespace_options
    host_network = ns_options.network == cri.NODE
    host_ipc = ns_options.ipc == cri.NODE
    host_pid = ns_options.pid == cri.NODE
    shared_pid = ns_options.pid == cri.POD
    sysctls = check_pod_sysctls(dict(linux.sysctls), host_network=host_network, host_ipc=host_ipc)
    hostname = pod_hostname(config, host_network)
    pod_dir = ctx.state_dir / "sandboxes" / sandbox_id
    driver = ctx.cgroup_driver

    async with Rollback(f"RunPodSandbox {sandbox_id}") as undo:
        undo.push("name reservation", lambda: ctx.sandbox_names.release(name, sandbox_id))
        # a bad cgroup parent is refused after the name's undo is in place: the name is free again for a retry
        cgroup = driver.pod_cgroup_path(linux.cgroup_parent, config.metadata.uid)
        await asyncio.to_thread(pod_dir.mkdir, mode=0o700, parents=True)
        undo.push("pod dir", lambda: asyncio.to_thread(shutil.rmtree, pod_dir, True))

        if await driver.create_pod_cgroup(cgroup):
            undo.push("pod cgroup", lambda: driver.remove_pod_cgroup(cgroup))
        ctx.fail_point("run_pod_sandbox.cgroup")

        kinds = {k for k, own in (("net", not host_network), ("ipc", not host_ipc), ("uts", not host_network))
                 if own}
        setup = NamespaceSetup(kinds=frozenset(kinds), hostname=hostname, sysctls=tuple(sysctls.items()))
        pins = await pin_namespaces(pod_dir / "ns", setup)
        undo.push("namespaces", lambda: unpin_namespaces(pins.values()))
        namespaces = {kind: str(path) for kind, path in pins.items()}
        ctx.fail_point("run_pod_sandbox.namespaces")

        pod_init = None
        if shared_pid:
            pid_pin = pod_dir / "ns" / "pid"
            init_ref = await start_pod_init(pid_pin)
            undo.push("pod init", lambda: remove_pod_init(ctx, init_ref, pid_pin, cgroup, sandbox_id))
            await driver.place_pod_init(cgroup, sandbox_id, init_ref.pid)
            namespaces["pid"] = str(pid_pin)
            pod_init = (init_ref.pid, init_ref.start_time)
        ctx.fail_point("run_pod_sandbox.pod_init")

        files = await asyncio.to_thread(write_pod_files, pod_dir, config, hostname, host_network)
        shm_path = HOST_SHM
        if not host_ipc:
            shm = pod_dir / "shm"
            await asyncio.to_thread(shm.mkdir, mode=0o755)
            await mount_tmpfs(shm, size_bytes=SHM_SIZE)
            undo.push("pod /dev/shm", lambda: unmount(shm))
            shm_path = str(shm)
        ctx.fail_point("run_pod_sandbox.files")

        meta = SandboxMeta(
            id=sandbox_id, name=name, config=config, runtime_handler=handler, created_at=ctx.clock_ns(),
            dir=str(pod_dir), cgroup=cgroup, namespaces=namespaces, host_network=host_network,
            host_ipc=host_ipc, host_pid=host_pid, hostname=hostname, hostname_path=str(files["hostname"]),
            hosts_path=str(files["hosts"]), resolv_path=str(files["resolv.conf"]), shm_path=shm_path)
        status = SandboxStatus(state=READY, pod_init=pod_init)
        status = await _setup_network(ctx, meta, status, undo)
        ctx.fail_point("run_pod_sandbox.network")
        await ctx.delay_point("run_pod_sandbox.record")

        sandbox = Sandbox(meta, status)
        await ctx.sandboxes.add(sandbox)
        undo.push("sandbox row", lambda: ctx.sandboxes.delete(sandbox))
        ctx.fail_point("run_pod_sandbox.record")
        undo.commit()
    log.info("pod %s (%s) is ready", sandbox_id, name)
    ctx.sandbox_event(sandbox, cri.CONTAINER_CREATED_EVENT)
    ctx.sandbox_event(sandbox, cri.CONTAINER_STARTED_EVENT)


async def _setup_network(ctx: ServiceContext, meta: SandboxMeta, status: SandboxStatus, undo: Rollback
                         ) -> SandboxStatus:
    """Attach the pod's network namespace to the pod network; host-network pods have none of their own."""
    if meta.host_network or ctx.network is None:
        return status
    network = ctx.network
    pod = pod_network_request(meta.id, meta.namespaces["net"], meta.config)
    started = time.monotonic()
    try:
        result = await network.setup(pod)
    except BaseException:
        ctx.metrics.network_setup_failures.inc()
        raise
    seconds = time.monotonic() - started
    ctx.metrics.network_setup_duration.labels(backend=result.backend).observe(seconds)
    # pushed after the namespaces' undo, so it runs before the netns pin goes (CNI DEL wants the netns)
    undo.push("pod network", lambda: network.teardown(pod))
    log.info("pod %s: network %s/%s, IPs %s (%.1f ms)", meta.id, result.backend, result.network,
             ", ".join(result.pod_ips), seconds * 1e3)
    return dataclasses.replace(status, ips=tuple(result.pod_ips), network=result.to_json())
