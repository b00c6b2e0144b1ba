"""How much metadata a client may hang on pods and containers.

Labels and annotations come back in every ListPodSandbox, ListContainers and stats answer, and the kubelet
refuses a gRPC message over 16 MiB: a few pods with megabytes of annotations would make every List fail, the
node unusable. So one pod's or one container's labels, annotations and names together may take 256 KiB (the
API server's limit for an object's annotations), and all of the node's together `[limits]
metadata_budget_bytes` (12 MiB by default, room left for the rest of a List answer): past it, creation answers
RESOURCE_EXHAUSTED until pods or containers go.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from cri import api as cri
from runtime import errors

if TYPE_CHECKING:  # the stores count each object's bytes with this module
    from cri.store.containers import Container
    from cri.store.sandboxes import Sandbox

MAX_OBJECT_BYTES = 256 * 1024


def _size(labels: Mapping[str, str], annotations: Mapping[str, str], *names: str) -> int:
    return (sum(len(k.encode()) + len(v.encode()) for m in (labels, annotations) for k, v in m.items())
            + sum(len(n.encode()) for n in names))


def pod_bytes(config: cri.PodSandboxConfig) -> int:
    meta = config.metadata
    return _size(config.labels, config.annotations, meta.name, meta.namespace, meta.uid)


def container_bytes(config: cri.ContainerConfig) -> int:
    return _size(config.labels, config.annotations, config.metadata.name, config.image.image)


def node_bytes(sandboxes: Iterable[Sandbox], containers: Iterable[Container]) -> int:
    """What the node's pods and containers take now (each object's count is kept with it)."""
    return sum(s.meta.metadata_bytes for s in sandboxes) + sum(c.meta.metadata_bytes for c in containers)


def check(kind: str, size: int, used: int, budget: int) -> None:
    """Refuse a new pod or container of `size` bytes of metadata: on its own, and with the node's `used`."""
    if size > MAX_OBJECT_BYTES:
        raise errors.InvalidArgument(
            f"{kind}: labels, annotations and names take {size} bytes, more than 256 KiB ({MAX_OBJECT_BYTES})")
    if used + size > budget:
        raise errors.ResourceExhausted(
            f"{kind}: its {size} bytes of labels and annotations would take the node's pods and containers to "
            f"{used + size} bytes, over limits.metadata_budget_bytes ({budget}): List answers would grow "
            "towards the kubelet's 16 MiB message limit")
