"""What a controller module turns an OCI `linux.resources` dict into: interface-file settings.

Each controller module (cpu.py, cpuset.py, memory.py, pids.py, hugetlb.py, io.py, rdma.py, unified.py) has a pure
`settings(resources) -> list[Setting]`, so the CRI -> cgroup mapping is unit-testable without a kernel; the
Cgroup applies them. A setting names the OCI keys it came from (`memory.limit`, `hugepageLimits.2MB`,
`unified.memory.high`, ...) so that a missing controller can be reported, and dropped, key by key.
A CRI (and OCI) value of 0 means "unset": nothing is written for it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from runtime import errors

log = logging.getLogger(__name__)

# `[cgroup] missing_controller`: what a limit whose cgroup v2 controller is missing does
MISSING_ERROR = "error"   # the request fails (FAILED_PRECONDITION) before anything is made or changed
MISSING_WARN = "warn"     # the limit is dropped, with a warning


@dataclass(frozen=True)
class Setting:
    """Write `value` to the interface file `file`, which exists only when `controller` is enabled.

    optional: skipped, not an error, when the file is missing although the controller is there (a swap limit of
    "max" or "0" without swap accounting, a hugetlb .rsvd.max on an older kernel).
    tolerated: skipped, and not reported as missing, when the controller is missing (a hugetlb limit of 0: there
    is nothing to forbid without the controller).
    fallback: (file, value) to write instead when `file` does not exist (io.bfq.weight -> io.weight).
    """

    keys: tuple[str, ...]
    controller: str | None
    file: str
    value: str
    optional: bool = False
    tolerated: bool = False
    fallback: tuple[str, str] | None = None


@dataclass(frozen=True)
class MissingLimit:
    """A requested limit that the cgroup cannot enforce: its controller is not available there."""

    key: str  # the OCI key, e.g. "memory.limit", "hugepageLimits.2MB", "unified.memory.high"
    controller: str  # e.g. "memory"; "cgroup v1 only" for knobs cgroup v2 does not have

    def __str__(self) -> str:
        return f"{self.key} (needs {self.controller})"


V1_ONLY = "cgroup v1 only"


def section(resources: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = resources.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise errors.InvalidArgument(f"linux.resources.{name} must be an object, got {value!r}")
    return value


def integer(sec: Mapping[str, Any], key: str, where: str) -> int:
    """An integer field; absent or null is 0 (unset)."""
    value = sec.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise errors.InvalidArgument(f"linux.resources.{where}.{key} must be an integer, got {value!r}")
    return value


def string(sec: Mapping[str, Any], key: str, where: str) -> str:
    value = sec.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise errors.InvalidArgument(f"linux.resources.{where}.{key} must be a string, got {value!r}")
    return value


def v1_only_keys(resources: Mapping[str, Any]) -> list[str]:
    """Requested knobs that exist only in cgroup v1: cgroup v2 cannot honour them."""
    keys = []
    cpu = section(resources, "cpu")
    for key in ("realtimeRuntime", "realtimePeriod"):
        if cpu.get(key):
            keys.append(f"cpu.{key}")
    memory = section(resources, "memory")
    for key in ("kernel", "kernelTCP"):
        if memory.get(key):
            keys.append(f"memory.{key}")
    if memory.get("swappiness") is not None:
        keys.append("memory.swappiness")
    if memory.get("disableOOMKiller"):
        keys.append("memory.disableOOMKiller")
    network = section(resources, "network")
    if network.get("classID"):
        keys.append("network.classID")
    if network.get("priorities"):
        keys.append("network.priorities")
    blkio = section(resources, "blockIO")
    if blkio.get("leafWeight"):
        keys.append("blockIO.leafWeight")
    return keys


def drop_limits(resources: Mapping[str, Any], missing: Iterable[MissingLimit]) -> dict[str, Any]:
    """A copy of `resources` without the given limits (crispd's "warn" policy for missing controllers)."""
    out: dict[str, Any] = copy.deepcopy(dict(resources))
    for limit in missing:
        name, _, rest = limit.key.partition(".")
        if name == "hugepageLimits":
            out[name] = [h for h in out.get(name) or [] if h.get("pageSize") != rest]
            continue
        sec = out.get(name)
        if isinstance(sec, dict):
            sec.pop(rest, None)
    return out


def enforceable_limits(resources: Mapping[str, Any], missing: Iterable[MissingLimit], policy: str, what: str
                       ) -> dict[str, Any]:
    """The one home of the missing-controller policy: `resources` when nothing is missing; else, with "error",
    FailedPrecondition naming every missing limit; with "warn", a copy without them (and a warning)."""
    missing = list(missing)
    if not missing:
        return dict(resources)
    described = ", ".join(f"{m.key} (needs {m.controller})" for m in missing)
    if policy != MISSING_WARN:
        raise errors.FailedPrecondition(
            f"{what}: this node's cgroup v2 lacks controllers for {described} "
            f'(set cgroup.missing_controller = "{MISSING_WARN}" to run without these limits)')
    log.warning("%s: dropping limits this node cannot enforce: %s", what, described)
    return drop_limits(resources, missing)
