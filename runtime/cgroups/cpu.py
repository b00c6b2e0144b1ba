"""cpu controller: cpu.weight (from CRI/OCI shares), cpu.max (quota/period), cpu.max.burst, cpu.idle; cpu.stat."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.cgroups import fs
from runtime.cgroups.resources import Setting, integer, section
from runtime.cgroups.stats import CpuStats

CONTROLLER = "cpu"

MIN_SHARES, MAX_SHARES = 2, 262144
MIN_WEIGHT, MAX_WEIGHT = 1, 10000


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares [2..262144] -> cgroup v2 cpu.weight [1..10000]; 0 stays 0 (unset).

    The log-quadratic curve runc >= 1.3.2, crun >= 1.23 and the kubelet use: with l = log2(shares),
    weight = ceil(10 ** ((l*l + 125*l) / 612 - 7/34)), which maps the minimum, the default and the maximum onto each
    other exactly (2 -> 1, 1024 -> 100, 262144 -> 10000), unlike the older linear mapping (1024 -> 39).
    """
    if shares == 0:
        return 0
    if shares <= MIN_SHARES:
        return MIN_WEIGHT
    if shares >= MAX_SHARES:
        return MAX_WEIGHT
    l2 = math.log2(shares)
    return math.ceil(10 ** ((l2 * l2 + 125 * l2) / 612 - 7 / 34))


def cpu_max(quota: int, period: int) -> str | None:
    """The cpu.max line for a CFS quota and period in microseconds; None when both are unset (0).

    quota < 0 means no limit ("max"); a period of 0 keeps the cgroup's current period (the kernel default is
    100000), so "quota" alone is written.
    """
    if quota == 0 and period == 0:
        return None
    if period < 0:
        raise errors.InvalidArgument(f"linux.resources.cpu.period must not be negative, got {period}")
    value = str(quota) if quota > 0 else "max"
    if period:
        value += f" {period}"
    return value


def settings(resources: Mapping[str, Any]) -> list[Setting]:
    cpu = section(resources, "cpu")
    out = []
    shares = integer(cpu, "shares", "cpu")
    if shares < 0:
        raise errors.InvalidArgument(f"linux.resources.cpu.shares must not be negative, got {shares}")
    if shares:
        out.append(Setting(("cpu.shares",), CONTROLLER, "cpu.weight", str(shares_to_weight(shares))))
    quota, period = integer(cpu, "quota", "cpu"), integer(cpu, "period", "cpu")
    value = cpu_max(quota, period)
    if value is not None:
        keys = tuple(f"cpu.{k}" for k, v in (("quota", quota), ("period", period)) if v)
        out.append(Setting(keys, CONTROLLER, "cpu.max", value))
    if cpu.get("burst") is not None:
        out.append(Setting(("cpu.burst",), CONTROLLER, "cpu.max.burst", str(integer(cpu, "burst", "cpu"))))
    if cpu.get("idle") is not None:
        out.append(Setting(("cpu.idle",), CONTROLLER, "cpu.idle", str(integer(cpu, "idle", "cpu"))))
    return out


def read_stats(cgroup_dir: Path) -> CpuStats | None:
    """cpu.stat: usage, user and system time always (a core file); throttling only with the cpu controller."""
    keys = fs.read_flat_keyed(cgroup_dir / "cpu.stat")
    return None if keys is None else CpuStats.from_keys(keys)
