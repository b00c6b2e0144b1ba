"""User namespaces (KEP-127, `hostUsers: false`): the CRI's options checked, and what they make of a container's spec.

A pod with `userns_options.mode` POD gets a user namespace of its own, made and mapped with the pod (exactly the
kubelet's one uid and one gid mapping, container id 0 mapped); its net, IPC and UTS namespaces are owned by it and
every container joins it. The container sees its rootfs and volumes with its own ids through id-mapped mounts
staged under the bundle (runtime.bundle.Idmap): each image layer and each bind-mounted volume is id-mapped, the
rootfs overlay and a multi-layer image volume's overlay are made over id-mapped layers. NODE is the host's user
namespace; CONTAINER and TARGET are refused.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, replace

from cri import api as cri
from cri.oci.mounts import BindRequest
from runtime.bundle import Idmap, Overlay, StagedMount, staged_path
from runtime.errors import InvalidArgument

_NS_MODE = cri.NamespaceMode
# ids are uint32; the kernel reserves 2**32 - 1
_ID_LIMIT = 2**32 - 1

Mapping = tuple[int, int, int]  # (container id, host id, length)


@dataclass(frozen=True)
class PodUserns:
    """A pod's own user namespace: its pinned file (once made) and its mappings."""

    uids: tuple[Mapping, ...]
    gids: tuple[Mapping, ...]
    path: str = ""

    @property
    def root(self) -> tuple[int, int]:
        """The host uid and gid of the container's root (what owns a container's writable layer)."""
        return self.uids[0][1], self.gids[0][1]

    def oci_mappings(self, ids: Sequence[Mapping]) -> list[dict[str, int]]:
        return [{"containerID": c, "hostID": h, "size": n} for c, h, n in ids]


def _mapping(items: Sequence[cri.IDMapping], what: str) -> tuple[Mapping, ...]:
    if len(items) != 1:
        raise InvalidArgument(f"user namespace: exactly one {what} mapping is supported, {len(items)} given")
    m = items[0]
    if m.container_id != 0:
        raise InvalidArgument(f"user namespace: the {what} mapping must map container id 0, it starts at "
                              f"{m.container_id}")
    if m.length == 0:
        raise InvalidArgument(f"user namespace: the {what} mapping has length 0")
    if m.host_id + m.length > _ID_LIMIT or m.container_id + m.length > _ID_LIMIT:
        raise InvalidArgument(f"user namespace: the {what} mapping {m.container_id}:{m.host_id}:{m.length} "
                              "goes beyond the last id")
    return ((m.container_id, m.host_id, m.length),)


def pod_userns(options: cri.NamespaceOption) -> PodUserns | None:
    """The pod's user namespace from RunPodSandbox's options (None: the host's); InvalidArgument naming what is
    wrong."""
    if not options.HasField("userns_options"):
        return None
    userns = options.userns_options
    if userns.mode == _NS_MODE.NODE:
        if userns.uids or userns.gids:
            raise InvalidArgument("user namespace: mode NODE takes no mappings")
        return None
    if userns.mode != _NS_MODE.POD:
        name = _NS_MODE.Name(userns.mode) if userns.mode in _NS_MODE.values() else str(userns.mode)
        raise InvalidArgument(f"user namespace: mode {name} is not supported (only NODE or POD)")
    for kind in ("network", "ipc", "pid"):
        if getattr(options, kind) == _NS_MODE.NODE:
            raise InvalidArgument(f"user namespace: a pod with its own cannot use the host's {kind} namespace")
    return PodUserns(uids=_mapping(userns.uids, "uid"), gids=_mapping(userns.gids, "gid"))


def check_container_userns(pod: cri.NamespaceOption, container: cri.NamespaceOption) -> None:
    """A container's own userns_options, if any, must say what its pod's say (it joins the pod's)."""
    if not container.HasField("userns_options"):
        return
    theirs = container.userns_options
    ours = pod.userns_options if pod.HasField("userns_options") else cri.UserNamespace(mode=_NS_MODE.NODE)
    if theirs.mode != ours.mode or list(theirs.uids) != list(ours.uids) or list(theirs.gids) != list(ours.gids):
        raise InvalidArgument("user namespace: a container's userns_options must be its pod's (it joins the pod's)")


class Stager:
    """Numbers the mounts staged under the bundle's idmap dir."""

    def __init__(self, bundle: str) -> None:
        self.bundle = bundle
        self.mounts: list[StagedMount] = []

    def idmapped(self, source: str) -> str:
        target = staged_path(self.bundle, len(self.mounts))
        self.mounts.append(StagedMount(target, source=source))
        return target

    def overlay(self, lowerdirs: Sequence[str]) -> str:
        staged = [self.idmapped(d) for d in lowerdirs]
        target = staged_path(self.bundle, len(self.mounts))
        self.mounts.append(StagedMount(target, lowerdirs=tuple(staged)))
        return target


def idmapped_overlay(overlay: Overlay, stager: Stager) -> Overlay:
    """The rootfs overlay over id-mapped image layers (the writable layer is not id-mapped: what the container
    writes belongs to its mapped host ids)."""
    return replace(overlay, lowerdirs=tuple(stager.idmapped(d) for d in overlay.lowerdirs))


def idmapped_binds(binds: Sequence[BindRequest], stager: Stager) -> list[BindRequest]:
    """CRI volumes and image volumes bound from their id-mapped staged copies."""
    out = []
    for b in binds:
        if b.lowerdirs:
            out.append(replace(b, source=stager.overlay(b.lowerdirs), lowerdirs=()))
        else:
            out.append(replace(b, source=stager.idmapped(b.source)))
    return out


def idmap_annotation(userns: PodUserns, stager: Stager) -> str:
    return Idmap(userns.path, tuple(stager.mounts)).annotation()


def bundle_of(rootfs_path: str) -> str:
    return posixpath.dirname(rootfs_path.rstrip("/"))
