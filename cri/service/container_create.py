"""CreateContainer: the image's snapshots as lower dirs, the OCI spec, a shim, and the container created by it.

The container is made to its end even if the kubelet gives up waiting; its retry of the same name then gets this
container's id (cri/lifecycle/creations.py).

Every step registers its undo; a failure anywhere leaves no shim, mount, cgroup, dir or row behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from cri import api as cri
from cri.oci import (
    LayeredFiles,
    PodContext,
    PodFiles,
    SpecInputs,
    SpecOptions,
    build_container_spec,
    inspect_host,
    resolve_stop_signal,
)
from cri.service.context import ServiceContext
from cri.store.containers import CREATED, RUNNING, Container, ContainerMeta, ContainerStatus
from cri.store.sandboxes import READY, Sandbox
from runtime import errors, failpoints
from runtime.bundle import Overlay
from runtime.cgroups import enforceable_limits
from runtime.cgroups import paths as cgroup_paths
from runtime.rollback import Rollback
from shim.protocol import ShimConfig

log = logging.getLogger(__name__)


def container_name(config: cri.ContainerConfig, sandbox: Sandbox) -> str:
    pod = sandbox.meta.config.metadata
    return f"{config.metadata.name}_{pod.name}_{pod.namespace}_{pod.uid}_{config.metadata.attempt}"


def _validate(config: cri.ContainerConfig) -> None:
    if not config.HasField("metadata") or not config.metadata.name:
        raise errors.InvalidArgument("container metadata needs a name")
    if "/" in config.metadata.name or "\0" in config.metadata.name:
        raise errors.InvalidArgument(f"container name {config.metadata.name!r} contains a bad character")
    if not config.image.image:
        raise errors.InvalidArgument("a container needs an image")


async def create_container(ctx: ServiceContext, request: cri.CreateContainerRequest, context: Any = None
                           ) -> cri.CreateContainerResponse:
    config = request.config
    _validate(config)
    sandbox = ctx.sandboxes.get(request.pod_sandbox_id)
    if sandbox.status.state != READY:
        raise errors.FailedPrecondition(f"pod {sandbox.id} is not ready: cannot create containers in it")
    name = container_name(config, sandbox)
    earlier = await ctx.creations.abandoned_result(ctx.container_names, name)
    if earlier is not None:
        log.info("CreateContainer %s: returning container %s, made for an earlier call that never got its answer",
                 name, earlier)
        return cri.CreateContainerResponse(container_id=earlier)
    container_id = secrets.token_hex(32)
    # what undoing this creation needs, should crispd die before it is done or undone (cri/recovery.py)
    intent = {"sandbox_id": sandbox.id, "bundle": str(_bundle_dir(ctx, container_id)),
              "container_dir": str(_container_dir(ctx, container_id)),
              "cgroup": cgroup_paths.container_cgroup_path(sandbox.meta.cgroup, container_id)}
    await ctx.container_names.reserve(name, container_id, ctx.clock_ns(), intent)
    await ctx.creations.run_to_the_end("container", ctx.container_names, name, container_id,
                                       _create(ctx, container_id, name, sandbox, request), context)
    return cri.CreateContainerResponse(container_id=container_id)


def _bundle_dir(ctx: ServiceContext, container_id: str) -> Path:
    return ctx.state_dir / "containers" / container_id


def _container_dir(ctx: ServiceContext, container_id: str) -> Path:
    return ctx.root_dir / "containers" / container_id


def _log_path(sandbox: Sandbox, config: cri.ContainerConfig) -> str:
    directory = sandbox.meta.config.log_directory
    if not directory or not config.log_path:
        return ""
    path = os.path.normpath(os.path.join(directory, config.log_path))
    if not path.startswith(os.path.normpath(directory) + os.sep):
        raise errors.InvalidArgument(f"log path {config.log_path!r} leaves the pod's log directory")
    return path


def _target_pid_ns(ctx: ServiceContext, config: cri.ContainerConfig, sandbox: Sandbox) -> str:
    ns = config.linux.security_context.namespace_options
    if ns.pid != cri.TARGET:
        return ""
    target = ctx.containers.find(ns.target_id)
    if target is None or target.meta.sandbox_id != sandbox.id:
        raise errors.NotFound(f"target container {ns.target_id!r} not found in pod {sandbox.id}")
    if target.status.state != RUNNING or not target.status.pid:
        raise errors.FailedPrecondition(f"target container {target.id} is not running")
    return f"/proc/{target.status.pid}/ns/pid"


def _prepare_dirs(bundle: Path, container_dir: Path, log_path: str, config: cri.ContainerConfig) -> None:
    bundle.mkdir(mode=0o700, parents=True)
    (bundle / "rootfs").mkdir(mode=0o755)
    for sub in ("upper", "work"):
        (container_dir / sub).mkdir(mode=0o755, parents=True)
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    # a host path that does not exist yet is made as a directory (as containerd and dockershim do)
    for mount in config.mounts:
        if mount.host_path and not os.path.lexists(mount.host_path):
            os.makedirs(mount.host_path, mode=0o755, exist_ok=True)


def _write_spec(bundle: Path, spec: dict[str, Any]) -> None:
    tmp = bundle / ".config.json.tmp"
    tmp.write_text(json.dumps(spec))
    os.replace(tmp, bundle / "config.json")


async def _create(ctx: ServiceContext, container_id: str, name: str, sandbox: Sandbox,
                  request: cri.CreateContainerRequest) -> None:
    """Make the container; a full root or state filesystem is RESOURCE_EXHAUSTED naming its dirs."""
    with errors.writing(f"container {container_id} in {_bundle_dir(ctx, container_id)} and "
                        f"{_container_dir(ctx, container_id)}"):
        await _make(ctx, container_id, name, sandbox, request)


async def _make(ctx: ServiceContext, container_id: str, name: str, sandbox: Sandbox,
                request: cri.CreateContainerRequest) -> None:
    config = request.config
    image = await ctx.images.resolve(config.image.image)  # no fail point: a read
    log_path = _log_path(sandbox, config)
    handler = ctx.handlers.resolve(sandbox.meta.runtime_handler)
    manager = ctx.cgroup_manager()
    bundle = _bundle_dir(ctx, container_id)
    cgroup = cgroup_paths.container_cgroup_path(sandbox.meta.cgroup, container_id)
    container_dir = _container_dir(ctx, container_id)
    meta_ns = sandbox.meta.namespaces
    privileged = config.linux.security_context.privileged

    async with Rollback(f"CreateContainer {container_id}") as undo:
        undo.push("name reservation", lambda: ctx.container_names.release(name, container_id))
        await ctx.debug.point("create_container.name")
        undo.push("dirs", lambda: asyncio.to_thread(_remove_dirs, bundle, container_dir))
        await asyncio.to_thread(_prepare_dirs, bundle, container_dir, log_path, config)
        await ctx.debug.point("create_container.dirs")

        overlay = Overlay(lowerdirs=tuple(image.snapshot_dirs), upperdir=str(container_dir / "upper"),
                          workdir=str(container_dir / "work"))
        pod = PodContext(
            sandbox_id=sandbox.id,
            net_ns_path=meta_ns.get("net", ""), ipc_ns_path=meta_ns.get("ipc", ""),
            uts_ns_path=meta_ns.get("uts", ""), pid_ns_path=meta_ns.get("pid", ""),
            target_pid_ns_path=_target_pid_ns(ctx, config, sandbox),
            files=PodFiles(hostname=sandbox.meta.hostname_path, hosts=sandbox.meta.hosts_path,
                           resolv_conf=sandbox.meta.resolv_path, shm=sandbox.meta.shm_path))
        features = await ctx.handlers.features(sandbox.meta.runtime_handler)  # no fail point: a read
        options = SpecOptions.from_config(ctx.config.oci, ctx.node,
                                          recursive_read_only=features.recursive_read_only_mounts)
        image_config = image.runtime_config

        def build() -> dict[str, Any]:
            host = inspect_host(config, privileged=privileged)
            inputs = SpecInputs(
                container_id=container_id, config=config, sandbox_config=sandbox.meta.config,
                image_config=image_config, pod=pod, node=ctx.node, rootfs_path=str(bundle / "rootfs"),
                cgroup_path=cgroup, overlay=overlay, image_name=config.image.image,
                image_files=LayeredFiles([overlay.upperdir, *overlay.lowerdirs]), host=host, options=options)
            return build_container_spec(inputs)

        spec = await asyncio.to_thread(build)  # no fail point: a read
        spec = await _check_controllers(ctx, container_id, spec, cgroup)  # no fail point: a read
        await asyncio.to_thread(_write_spec, bundle, spec)
        await ctx.debug.point("create_container.spec")

        shim_config = ShimConfig(
            id=container_id, bundle=str(bundle), executor=list(handler.argv), executor_root=str(handler.root),
            log_path=log_path, log_max_line=ctx.config.shim.log_max_line_bytes, stdin=config.stdin,
            stdin_once=config.stdin_once, mount_rootfs=handler.kind == "oci",
            cgroup2_mount=str(manager.mount), cgroup=cgroup,
            cgroup2_bind=cgroup_paths.oci_runtime_bind(manager.mount) if handler.kind == "oci" else "",
            hang_points=[p for p in ctx.config.debug.hang_points if failpoints.operation_of(p) == "shim"])
        # before the create: a shim that dies half way through it leaves what it made for the discard
        undo.push("shim and container", lambda: ctx.shims.discard(container_id))
        _, pid = await ctx.shims.create(shim_config)
        await ctx.debug.point("create_container.shim")

        user = spec["process"]["user"]
        meta = ContainerMeta(
            id=container_id, name=name, sandbox_id=sandbox.id, config=config, created_at=ctx.clock_ns(),
            image_id=image.id, image_ref=image.image_ref, image_name=_reported_image_name(config, image.repo_tags),
            handler=sandbox.meta.runtime_handler, bundle=str(bundle), container_dir=str(container_dir),
            lowerdirs=tuple(image.snapshot_dirs), log_path=log_path, cgroup=cgroup,
            stop_signal=resolve_stop_signal(config, image_config), uid=int(user.get("uid", 0)),
            gid=int(user.get("gid", 0)), groups=tuple(int(g) for g in user.get("additionalGids", [])))
        resources = config.linux.resources.SerializeToString() if config.linux.HasField("resources") else b""
        container = Container(meta, ContainerStatus(state=CREATED, pid=pid, resources=resources.hex()))
        await ctx.containers.add(container)
        undo.push("container row", lambda: ctx.containers.delete(container))
        await ctx.debug.point("create_container.record")
        undo.commit()
    log.info("container %s (%s) created in pod %s", container_id, name, sandbox.id)
    ctx.events.container(container, cri.CONTAINER_CREATED_EVENT)


def _reported_image_name(config: cri.ContainerConfig, repo_tags: tuple[str, ...] | list[str]) -> str:
    """ContainerStatus.image: the name the container was created with; an image id is shown as its first tag."""
    asked = config.image.image
    if (asked.startswith("sha256:") or all(c in "0123456789abcdef" for c in asked)) and repo_tags:
        return repo_tags[0]
    return asked


async def _check_controllers(ctx: ServiceContext, container_id: str, spec: dict[str, Any], cgroup: str
                             ) -> dict[str, Any]:
    """A limit whose cgroup controller is missing: an error, or (config says "warn") dropped with a warning."""
    resources = spec["linux"].get("resources", {})
    manager = ctx.cgroup_manager()
    missing = await asyncio.to_thread(manager.missing_controllers, resources, cgroup)
    spec["linux"]["resources"] = enforceable_limits(resources, missing, ctx.config.cgroup.missing_controller,
                                                    f"container {container_id}")
    return spec


def _remove_dirs(bundle: Path, container_dir: Path) -> None:
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.rmtree(container_dir, ignore_errors=True)
