"""CreateContainer: the image's snapshots as lower dirs, the OCI spec, a shim on its way for the container, and its row.

The container is recorded CREATED but not made (pid 0, `Container.unmade`): every check that can refuse it is made
here, while the executor's `create` (namespaces, cgroup, rootfs, the init waiting to be started) is StartContainer's
(cri/lifecycle/containers.py `_make`), as containerd makes its task there.

The container is made to its end even if the kubelet gives up waiting; its retry of the same name then gets this
container's id (cri/lifecycle/creations.py).

Every step registers its undo; a failure anywhere leaves no shim, mount, cgroup, dir or row behind.

The spec gets the container's CDI devices (cri/cdi.py), then the NRI plugins' adjustments, before it is written;
no NRI plugin is synchronized meanwhile (it would miss this container).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cri import api as cri
from cri import cdi, metadata_limits
from cri.oci import (
    LayeredFiles,
    PodContext,
    PodFiles,
    SpecInputs,
    SpecOptions,
    build_container_spec,
    image_volume,
    inspect_host,
    resolve_stop_signal,
    resources_in_force,
)
from cri.oci.userns import PodUserns, pod_userns
from cri.oci.workdir import make_working_dir
from cri.service.context import ServiceContext
from cri.service.images import ImageRecord
from cri.service.shim_plans import shim_plan
from cri.store.containers import CREATED, RUNNING, Container, ContainerMeta, ContainerStatus
from cri.store.sandboxes import READY, Sandbox
from runtime import errors
from runtime.bundle import Overlay, write_config
from runtime.cgroups import CgroupV2Manager, MissingLimit, enforceable_limits
from runtime.fstree import remove_tree
from runtime.linux import idmap
from runtime.rollback import Rollback

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
    metadata_limits.check(f"container {name}", metadata_limits.container_bytes(config),
                          metadata_limits.node_bytes(ctx.sandboxes.all(), ctx.containers.all()),
                          ctx.config.limits.metadata_budget_bytes)
    container_id = secrets.token_hex(32)
    # what undoing this creation needs, should crispd die before it is done or undone (cri/recovery.py)
    intent = {"sandbox_id": sandbox.id, "bundle": str(_bundle_dir(ctx, container_id)),
              "container_dir": str(_container_dir(ctx, container_id)),
              "cgroup": ctx.cgroup_driver.layout.leaf(sandbox.meta.cgroup, container_id)}
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


def _pod_userns(sandbox: Sandbox) -> PodUserns | None:
    """The pod's own user namespace, with the mappings RunPodSandbox checked."""
    path = sandbox.meta.namespaces.get("user")
    userns = pod_userns(sandbox.meta.config.linux.security_context.namespace_options)
    if userns is None or not path:
        return None
    return dataclasses.replace(userns, path=path)


def _check_idmappable(config: cri.ContainerConfig, userns: PodUserns) -> None:
    """Every volume of a user-namespaced container is id-mapped: one whose filesystem this kernel cannot id-map
    (tmpfs before Linux 6.3, ...) is refused up front, named. Blocking: runs in a worker thread."""
    sources = [m.host_path for m in config.mounts if m.host_path and os.path.exists(m.host_path)]
    problems = idmap.probe(sources, userns.path, recursive=True) if sources else {}
    for mount in config.mounts:
        if problems.get(mount.host_path):
            raise errors.FailedPrecondition(
                f"volume {mount.host_path} -> {mount.container_path}: its filesystem cannot be id-mapped for the "
                f"pod's user namespace on this kernel ({problems[mount.host_path]})")


def _prepare_dirs(bundle: Path, container_dir: Path, log_path: str, config: cri.ContainerConfig,
                  root_ids: tuple[int, int] | None) -> None:
    bundle.mkdir(mode=0o700, parents=True)
    (bundle / "rootfs").mkdir(mode=0o755)
    for sub in ("upper", "work"):
        (container_dir / sub).mkdir(mode=0o755, parents=True)
    if root_ids is not None:
        # in a user namespace the container's root owns its writable layer's root (the image layers it sees
        # through id-mapped mounts; nothing of the image is chowned), and may pass through the bundle dir to
        # its rootfs (as containerd's 0711)
        os.chown(container_dir / "upper", *root_ids)
        bundle.chmod(0o711)
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    # a host path that does not exist yet is made as a directory (as containerd and dockershim do)
    for mount in config.mounts:
        if mount.host_path and not os.path.lexists(mount.host_path):
            os.makedirs(mount.host_path, mode=0o755, exist_ok=True)


async def _create(ctx: ServiceContext, container_id: str, name: str, sandbox: Sandbox,
                  request: cri.CreateContainerRequest) -> None:
    """Under the pod's lock: a StopPodSandbox or RemovePodSandbox that comes meanwhile (a kubelet that gave up on
    this call) waits for the container and stops or removes it too, and a creation that had to wait for one of
    them finds the pod stopped. A full root or state filesystem is RESOURCE_EXHAUSTED naming its dirs."""
    async with sandbox.lock:
        if sandbox.status.state != READY:
            await ctx.container_names.release(name, container_id)
            raise errors.FailedPrecondition(f"pod {sandbox.id} was stopped: cannot create containers in it")
        async with ctx.nri.creation():
            with errors.writing(f"container {container_id} in {_bundle_dir(ctx, container_id)} and "
                                f"{_container_dir(ctx, container_id)}"), ctx.images.kept() as keep:
                await _create_in_pod(ctx, container_id, name, sandbox, request, keep)


async def _create_in_pod(ctx: ServiceContext, container_id: str, name: str, sandbox: Sandbox,
                         request: cri.CreateContainerRequest, keep: Callable[[ImageRecord], None]) -> None:
    """`keep`: the images' snapshots are kept from GC from their lookup until the row counts (`ImageManager.kept`):
    a RemoveImage meanwhile leaves them for StartContainer's mount."""
    config = request.config
    async with Rollback(f"CreateContainer {container_id}") as undo:
        undo.push("name reservation", lambda: ctx.container_names.release(name, container_id))
        await ctx.debug.point("create_container.name")
        # the reads that may refuse the request: after the undo of the name, which a refusal gives back
        image = await ctx.images.resolve(config.image.image)  # no fail point: a read
        keep(image)  # no await since the lookup
        volume_images = await _image_volume_images(ctx, config, keep)  # no fail point: a read
        log_path = _log_path(sandbox, config)
        driver = ctx.cgroup_driver
        bundle = _bundle_dir(ctx, container_id)
        # the container's cgroup, once: the spec gets it in the driver's OCI form, the record and the shim as a path
        cgroup = driver.layout.leaf(sandbox.meta.cgroup, container_id)
        cgroups_path = driver.layout.oci(sandbox.meta.cgroup, container_id)
        # what its shim is spawned with (an unknown handler, or no cgroup2 mount, refuses the request here)
        plan = shim_plan(ctx, container_id, bundle, sandbox.meta.runtime_handler, log_path, config, cgroup)
        container_dir = _container_dir(ctx, container_id)
        meta_ns = sandbox.meta.namespaces
        privileged = config.linux.security_context.privileged

        undo.push("dirs", lambda: asyncio.to_thread(_remove_dirs, bundle, container_dir))
        userns = _pod_userns(sandbox)
        await asyncio.to_thread(_prepare_dirs, bundle, container_dir, log_path, config,
                                userns.root if userns is not None else None)
        await ctx.debug.point("create_container.dirs")

        # the shim is forked while the spec is made: it reads config.json only when StartContainer asks it to
        # create; until then a shim is "new", and its shutdown (the undo, or a removal's) only ends it
        spawning = ctx.shims.spawn_soon(plan.config)
        undo.push("shim", lambda: _discard_spawned(ctx, container_id, spawning))

        overlay = Overlay(lowerdirs=tuple(image.snapshot_dirs), upperdir=str(container_dir / "upper"),
                          workdir=str(container_dir / "work"))
        pod = PodContext(
            sandbox_id=sandbox.id,
            net_ns_path=meta_ns.get("net", ""), ipc_ns_path=meta_ns.get("ipc", ""),
            uts_ns_path=meta_ns.get("uts", ""), pid_ns_path=meta_ns.get("pid", ""),
            target_pid_ns_path=_target_pid_ns(ctx, config, sandbox), userns=userns,
            files=PodFiles(hostname=sandbox.meta.hostname_path, hosts=sandbox.meta.hosts_path,
                           resolv_conf=sandbox.meta.resolv_path, shm=sandbox.meta.shm_path))
        image_config = image.runtime_config

        def build() -> dict[str, Any]:
            """The spec, with its working dir made in the writable layer and its CDI devices injected: blocking work
            in one trip to a worker thread (each trip costs the loop a wake-up and a hand-over)."""
            features = ctx.handlers.features_blocking(sandbox.meta.runtime_handler)
            options = SpecOptions.from_config(ctx.config.oci, ctx.node,
                                              recursive_read_only=features.recursive_read_only_mounts)
            host = inspect_host(config, privileged=privileged)
            if userns is not None:
                _check_idmappable(config, userns)
            volumes = {m.container_path: image_volume(volume_images[m.container_path].id,
                                                      volume_images[m.container_path].snapshot_dirs,
                                                      m.image_sub_path)
                       for m in config.mounts if m.container_path in volume_images}
            inputs = SpecInputs(
                container_id=container_id, config=config, sandbox_config=sandbox.meta.config,
                image_config=image_config, pod=pod, node=ctx.node, rootfs_path=str(bundle / "rootfs"),
                cgroup_path=cgroups_path, overlay=overlay, image_name=config.image.image,
                image_files=LayeredFiles([overlay.upperdir, *overlay.lowerdirs]), host=host,
                image_volumes=volumes, options=options)
            spec = build_container_spec(inputs)
            make_working_dir(LayeredFiles(overlay.lowerdirs), overlay.upperdir, spec["process"]["cwd"])
            ctx.debug.point_in_thread("create_container.working_dir")
            cdi.inject_devices(ctx.config.cdi, spec, cdi.requested_devices(config))
            return spec

        spec = await asyncio.to_thread(build)
        await ctx.debug.point("create_container.cdi")
        seen = await ctx.nri.create_container(sandbox, container_id, config, spec, ctx.clock_ns())
        undo.push("NRI plugins", lambda: ctx.nri.abandon_container(sandbox, seen))
        await ctx.debug.point("create_container.nri")
        manager = ctx.cgroup_manager()

        def write() -> list[MissingLimit]:
            """The limits whose controllers are missing dropped (`_enforceable`), then the spec written: one trip to a
            worker thread. Returns the limits dropped."""
            dropped = _enforceable(ctx, manager, container_id, spec, cgroup)
            write_config(str(bundle), spec)
            return dropped

        dropped = await asyncio.to_thread(write)
        await ctx.debug.point("create_container.spec")

        # the container itself is made by StartContainer (cri/lifecycle/containers.py: `_make`), as containerd makes
        # its task there: here only its shim, on its way (not awaited: StartContainer and a removal wait for it)
        await ctx.debug.point("create_container.shim")

        user = spec["process"]["user"]
        meta = ContainerMeta(
            id=container_id, name=name, sandbox_id=sandbox.id, config=_with_image_refs(config, volume_images),
            created_at=ctx.clock_ns(),
            image_id=image.id, image_ref=image.image_ref, image_name=_reported_image_name(config, image.repo_tags),
            handler=sandbox.meta.runtime_handler, bundle=str(bundle), container_dir=str(container_dir),
            lowerdirs=tuple(image.snapshot_dirs), log_path=log_path, cgroup=cgroup,
            stop_signal=resolve_stop_signal(config, image_config), uid=int(user.get("uid", 0)),
            gid=int(user.get("gid", 0)), groups=tuple(int(g) for g in user.get("additionalGids", [])),
            volume_snapshots=tuple(sorted({d for v in volume_images.values() for d in v.snapshot_dirs})))
        resources = b""
        if config.linux.HasField("resources"):
            in_force = resources_in_force(config.linux.resources, (m.key for m in dropped))
            resources = in_force.SerializeToString()
        # pid 0: not made yet (`Container.unmade`)
        container = Container(meta, ContainerStatus(state=CREATED, pid=0, resources=resources.hex(),
                                                    dropped_limits=[str(m) for m in dropped]))
        await ctx.containers.add(container)
        undo.push("container row", lambda: ctx.containers.delete(container))
        await ctx.debug.point("create_container.record")
        undo.commit()
    log.info("container %s (%s) created in pod %s", container_id, name, sandbox.id)
    ctx.events.container(container, cri.CONTAINER_CREATED_EVENT)
    await ctx.nri.post_create_container(container)  # no fail point: NRI hears of a done creation


async def _image_volume_images(ctx: ServiceContext, config: cri.ContainerConfig,
                               keep: Callable[[ImageRecord], None]) -> dict[str, ImageRecord]:
    """The images of the CRI mounts that have one (the kubelet pulled them), by container path, each kept from GC
    as it is found (`keep`); NotFound if gone."""
    out = {}
    for m in config.mounts:
        if m.HasField("image") and m.image.image:
            if m.container_path in out:
                raise errors.InvalidArgument(f"two image volumes on {m.container_path!r}")
            out[m.container_path] = await ctx.images.resolve(m.image.image)
            keep(out[m.container_path])  # no await since the lookup
    return out


def _with_image_refs(config: cri.ContainerConfig, volume_images: dict[str, ImageRecord]) -> cri.ContainerConfig:
    """The config as recorded: each image volume's ImageSpec carries the id of the image it was made of
    (image_ref, which ContainerStatus.mounts reports)."""
    if not volume_images:
        return config
    recorded = cri.ContainerConfig()
    recorded.CopyFrom(config)
    for m in recorded.mounts:
        if m.container_path in volume_images and m.HasField("image"):
            spec: Any = m.image  # image_ref is newer than the published stubs' types (cri/api.py)
            spec.image_ref = volume_images[m.container_path].id
    return recorded


def _reported_image_name(config: cri.ContainerConfig, repo_tags: tuple[str, ...] | list[str]) -> str:
    """ContainerStatus.image: the name the container was created with; an image id is shown as its first tag."""
    asked = config.image.image
    if (asked.startswith("sha256:") or all(c in "0123456789abcdef" for c in asked)) and repo_tags:
        return repo_tags[0]
    return asked


def _enforceable(ctx: ServiceContext, manager: CgroupV2Manager, container_id: str, spec: dict[str, Any], cgroup: str
                 ) -> list[MissingLimit]:
    """A limit whose cgroup controller is missing: an error, or (config says "warn") dropped from the spec with a
    warning. Returns the limits dropped. Blocking: runs in a worker thread."""
    resources = spec["linux"].get("resources", {})
    missing = manager.missing_controllers(resources, cgroup)
    spec["linux"]["resources"] = enforceable_limits(resources, missing, ctx.config.cgroup.missing_controller,
                                                    f"container {container_id}")
    return missing


async def _discard_spawned(ctx: ServiceContext, container_id: str, spawning: asyncio.Future[Any]) -> None:
    """The shim spawned for a creation that failed, gone once its spawn has ended (a failed spawn left none; a new
    shim only exits)."""
    await asyncio.wait({spawning})
    if not spawning.cancelled():
        spawning.exception()  # retrieved: the creation's own error is the one reported
    await ctx.shims.discard(container_id)


def _remove_dirs(bundle: Path, container_dir: Path) -> None:
    remove_tree(bundle, ignore_errors=True)
    remove_tree(container_dir, ignore_errors=True)
