"""rdma controller: OCI rdma -> rdma.max lines ("<device> hca_handle=N hca_object=M")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime import errors
from runtime.cgroups.resources import Setting, integer, section

CONTROLLER = "rdma"


def settings(resources: Mapping[str, Any]) -> list[Setting]:
    out = []
    for device, limits in section(resources, "rdma").items():
        if not device or any(c.isspace() for c in device) or not isinstance(limits, Mapping):
            raise errors.InvalidArgument(f"linux.resources.rdma: bad entry {device!r}: {limits!r}")
        parts = []
        for key, name in (("hcaHandles", "hca_handle"), ("hcaObjects", "hca_object")):
            value = integer(limits, key, f"rdma.{device}")
            if value:
                parts.append(f"{name}={value}")
        if parts:
            out.append(Setting((f"rdma.{device}",), CONTROLLER, "rdma.max", f"{device} {' '.join(parts)}"))
    return out
