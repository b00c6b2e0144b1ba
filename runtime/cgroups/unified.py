"""OCI `unified`: raw cgroup v2 interface files by name (CRI `LinuxContainerResources.unified`).

The controller is the part of the name before the first dot (`memory.high` needs memory). The files through which
crisp itself manages the cgroup (cgroup.procs, cgroup.subtree_control, ...) cannot be written this way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from runtime import errors
from runtime.cgroups.resources import Setting, section

_NAME = re.compile(r"^[a-z][a-z0-9_]*\.[A-Za-z0-9_.]+$")
_RESERVED = frozenset(
    {"cgroup.procs", "cgroup.threads", "cgroup.subtree_control", "cgroup.kill", "cgroup.freeze", "cgroup.type"}
)


def controller_of(name: str) -> str | None:
    """The controller a unified key needs; None for core cgroup.* files."""
    prefix = name.split(".", 1)[0]
    return None if prefix == "cgroup" else prefix


def settings(resources: Mapping[str, Any]) -> list[Setting]:
    out = []
    for name, value in section(resources, "unified").items():
        if not isinstance(name, str) or not _NAME.match(name) or ".." in name or name in _RESERVED:
            raise errors.InvalidArgument(f"linux.resources.unified: {name!r} is not a cgroup file crisp may set")
        if not isinstance(value, str):
            raise errors.InvalidArgument(f"linux.resources.unified.{name} must be a string, got {value!r}")
        out.append(Setting((f"unified.{name}",), controller_of(name), name, value))
    return out
