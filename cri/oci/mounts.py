"""Mounts, masked and read-only paths, and devices of a container's OCI spec.

Order as containerd builds it: the default mounts (proc, /dev tmpfs, devpts, shm, mqueue, sysfs, cgroup) minus
any whose destination a CRI or pod mount takes over (and everything under /dev when /dev itself is mounted),
then the CRI mounts and the pod's files (hostname, hosts, resolv.conf, /dev/shm) unless a CRI mount targets the
same path, sorted by depth so that a mount never hides a deeper one.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cri import api as cri
from cri.oci.host import DeviceLookup, DeviceNode, MountSource
from cri.oci.user import ImageFiles, LayeredFiles
from runtime.bundle import Overlay, mount_refused_in_proc
from runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unimplemented

_PROPAGATION = cri.MountPropagation

# Masked (bind of /dev/null or an empty read-only tmpfs) and read-only paths: runc's, containerd's and the
# kubelet's defaults for a non-privileged container.
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)


def default_mounts(*, privileged: bool) -> list[dict[str, Any]]:
    """The filesystems every container gets; sysfs and the cgroup filesystem are read-only unless privileged."""
    ro_or_rw = "rw" if privileged else "ro"
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", ro_or_rw]},
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", ro_or_rw],
        },
    ]


@dataclass(frozen=True)
class BindRequest:
    """One bind mount to add: a CRI mount, or a file of the pod that no CRI mount overrides."""

    container_path: str
    source: str
    readonly: bool = False
    recursive_readonly: bool = False
    propagation: int = _PROPAGATION.PROPAGATION_PRIVATE
    # an image volume of several layers: a read-only overlay of these dirs (topmost first) instead of a bind
    lowerdirs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageVolume:
    """A CRI mount's image on the host: its id and what makes up its (sub)path in the image's layers
    (`LayeredFiles.sources`): one file or directory to bind, or the directories of several layers to overlay."""

    image_id: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class PodFiles:
    """The pod's files bound into each container (empty = none)."""

    hostname: str = ""
    hosts: str = ""
    resolv_conf: str = ""
    shm: str = ""


def _clean(path: str) -> str:
    return posixpath.normpath(path) if path else path


def image_volume(image_id: str, snapshot_dirs: Sequence[str], sub_path: str) -> ImageVolume:
    """Look up an image volume's (sub)path in the image's layers (topmost first) without mounting them; a sub path
    resolves inside the image, symlinks included. NotFound when the image has no such path; FailedPrecondition when
    its layers do not fit one overlay mount. Blocking: call it from a worker thread."""
    sources = LayeredFiles(snapshot_dirs).sources(sub_path or "/")
    if sources is None:
        raise NotFound(f"image_sub_path {sub_path!r} does not exist in image {image_id}")
    if len(sources) > 1:
        _, base = Overlay(lowerdirs=sources).mount_data()
        if base is not None:
            raise FailedPrecondition(f"image {image_id}: its {len(sources)} layers do not fit one overlay mount "
                                     "as an image volume")
    return ImageVolume(image_id, sources)


def _image_volume_bind(m: cri.Mount, volumes: Mapping[str, ImageVolume]) -> BindRequest:
    where = f"image volume {m.image.image!r} -> {m.container_path!r}"
    if not m.readonly:
        raise InvalidArgument(f"{where}: an image volume is read-only, readonly must be set")
    if m.host_path:
        raise InvalidArgument(f"{where}: a mount has either an image or a host path, not both")
    volume = volumes.get(m.container_path)
    if volume is None or not volume.sources:
        raise InvalidArgument(f"{where}: the image was not looked up")
    if len(volume.sources) == 1:
        return BindRequest(container_path=m.container_path, source=volume.sources[0], readonly=True)
    return BindRequest(container_path=m.container_path, source="overlay", readonly=True, lowerdirs=volume.sources)


def cri_binds(
    mounts: Sequence[cri.Mount], sources: Mapping[str, MountSource], *, rro_supported: bool,
    image_volumes: Mapping[str, ImageVolume] | None = None,
) -> list[BindRequest]:
    """Check the CRI mounts and pair each with its resolved host source (an image volume: with its layers,
    `image_volumes` by container path)."""
    out = []
    for m in mounts:
        where = f"mount {m.host_path!r} -> {m.container_path!r}"
        if not m.container_path.startswith("/"):
            raise InvalidArgument(f"{where}: container_path must be an absolute path")
        if m.uidMappings or m.gidMappings:
            raise Unimplemented(f"{where}: per-mount id mappings are not supported (a pod with its own user namespace "
                                "has every volume id-mapped with the pod's mappings)")
        if m.HasField("image") and m.image.image:
            out.append(_image_volume_bind(m, image_volumes or {}))
            continue
        if m.image_sub_path:
            raise InvalidArgument(f"{where}: image_sub_path is for image volumes only")
        if m.propagation not in _PROPAGATION.values():
            raise InvalidArgument(f"{where}: unknown propagation {m.propagation}")
        if m.recursive_read_only:
            if not m.readonly:
                raise InvalidArgument(f"{where}: recursive_read_only needs readonly")
            if m.propagation != _PROPAGATION.PROPAGATION_PRIVATE:
                raise InvalidArgument(f"{where}: recursive_read_only needs private propagation")
            if not rro_supported:
                raise InvalidArgument(f"{where}: the runtime handler does not support recursive read-only mounts")
        source = sources.get(m.host_path)
        if source is None or source.error or not source.resolved:
            reason = source.error if source is not None else "was not inspected"
            raise InvalidArgument(f"{where}: host path {reason}")
        if m.propagation == _PROPAGATION.PROPAGATION_BIDIRECTIONAL and source.propagation != "shared":
            raise FailedPrecondition(
                f"{where}: bidirectional propagation needs {source.resolved} on a shared mount, "
                f"it is on a {source.propagation} one"
            )
        if m.propagation == _PROPAGATION.PROPAGATION_HOST_TO_CONTAINER and source.propagation == "private":
            raise FailedPrecondition(
                f"{where}: host-to-container propagation needs {source.resolved} on a shared or slave mount, "
                "it is on a private one"
            )
        out.append(
            BindRequest(
                container_path=m.container_path,
                source=source.resolved,
                readonly=m.readonly,
                recursive_readonly=m.recursive_read_only,
                propagation=m.propagation,
            )
        )
    return out


def check_bind_targets(binds: Sequence[BindRequest], files: ImageFiles) -> None:
    """A bind must not land inside /proc where the image's symlinks take it (`/procl/sys` with `/procl -> /proc`):
    refused here for every runtime handler (crun 1.8 would mount it there; runc and the built-in executor refuse
    it too, later and less clearly)."""
    for b in binds:
        landed = files.resolve(b.container_path)
        if mount_refused_in_proc(landed, "bind"):
            via = "" if landed == _clean(b.container_path) else f" (through a symlink of the image: {landed})"
            raise InvalidArgument(f"mount -> {b.container_path!r}{via}: nothing may be mounted inside /proc")


def pod_binds(files: PodFiles, cri_destinations: set[str], *, readonly_rootfs: bool) -> list[BindRequest]:
    """The pod's hostname, hosts and resolv.conf (read-only when the rootfs is) and /dev/shm, unless a CRI mount
    takes the path."""
    out = []
    for dest, source, readonly in (
        ("/etc/hostname", files.hostname, readonly_rootfs),
        ("/etc/hosts", files.hosts, readonly_rootfs),
        ("/etc/resolv.conf", files.resolv_conf, readonly_rootfs),
        ("/dev/shm", files.shm, False),
    ):
        if source and dest not in cri_destinations:
            out.append(BindRequest(container_path=dest, source=source, readonly=readonly))
    return out


def _depth(path: str) -> int:
    return _clean(path).count("/")


def assemble_mounts(
    binds: Sequence[BindRequest], *, privileged: bool
) -> tuple[list[dict[str, Any]], str]:
    """The spec's `mounts` and `linux.rootfsPropagation` ("" = the runtime's default, rprivate)."""
    taken = {_clean(b.container_path) for b in binds}
    mounts = []
    for m in default_mounts(privileged=privileged):
        dest = _clean(m["destination"])
        if dest in taken or ("/dev" in taken and dest.startswith("/dev/")):
            continue
        mounts.append(m)
    rootfs_propagation = ""
    for b in sorted(binds, key=lambda b: _depth(b.container_path)):
        if b.lowerdirs:
            data, _ = Overlay(lowerdirs=b.lowerdirs).mount_data()
            mounts.append({"destination": b.container_path, "type": "overlay", "source": "overlay",
                           "options": ["ro", data]})
            continue
        options = ["rbind"]
        if b.propagation == _PROPAGATION.PROPAGATION_BIDIRECTIONAL:
            options.append("rshared")
            rootfs_propagation = "rshared"
        elif b.propagation == _PROPAGATION.PROPAGATION_HOST_TO_CONTAINER:
            options.append("rslave")
            if rootfs_propagation != "rshared":
                rootfs_propagation = "rslave"
        else:
            options.append("rprivate")
        if b.recursive_readonly:
            options.append("rro")
        else:
            options.append("ro" if b.readonly else "rw")
        mounts.append({"destination": b.container_path, "type": "bind", "source": b.source, "options": options})
    return mounts, rootfs_propagation


# ---------------------------------------------------------------------------------------------- devices

_PERMISSION_CHARS = frozenset("rwm")


def _device_entry(node: DeviceNode, container_path: str) -> dict[str, Any]:
    return {
        "path": container_path,
        "type": node.type,
        "major": node.major,
        "minor": node.minor,
        "fileMode": node.file_mode,
        "uid": node.uid,
        "gid": node.gid,
    }


def cri_devices(
    devices: Sequence[cri.Device], lookups: Mapping[str, DeviceLookup]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`linux.devices` and the device-cgroup allow rules for the CRI devices (a directory: every device below)."""
    nodes: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    for d in devices:
        where = f"device {d.host_path!r} -> {d.container_path!r}"
        permissions = d.permissions or "rwm"
        if not set(permissions) <= _PERMISSION_CHARS:
            raise InvalidArgument(f"{where}: permissions {d.permissions!r} may only contain r, w and m")
        lookup = lookups.get(d.host_path)
        if lookup is None or lookup.error:
            reason = lookup.error if lookup is not None else "was not inspected"
            raise InvalidArgument(f"{where}: host path {reason}")
        container_path = d.container_path or d.host_path
        if not container_path.startswith("/"):
            raise InvalidArgument(f"{where}: container_path must be an absolute path")
        access = "".join(c for c in "rwm" if c in permissions)
        for node in lookup.nodes:
            if node.path == lookup.resolved:
                path = container_path
            else:
                path = posixpath.join(container_path, posixpath.relpath(node.path, lookup.resolved))
            nodes.append(_device_entry(node, path))
            rules.append({"allow": True, "type": node.type, "major": node.major, "minor": node.minor, "access": access})
    return nodes, rules


def host_devices(nodes: Sequence[DeviceNode]) -> list[dict[str, Any]]:
    """Every host device under /dev, at the same path (a privileged container)."""
    return [_device_entry(n, n.path) for n in nodes]
