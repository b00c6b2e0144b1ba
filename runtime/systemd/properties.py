"""Unit properties for crisp's transient units, from the same resource mapping the cgroupfs driver writes.

`runtime.cgroups` turns an OCI `linux.resources` dict into interface-file settings (`all_settings`); here each
setting whose file systemd manages through a unit property becomes that property (`memory.max` -> MemoryMax,
`cpu.max` -> CPUQuotaPerSecUSec, ...). The files are written as well, after the unit exists (as runc's systemd
manager does): they carry the exact values (systemd rounds a CPU quota to 10 ms per second) and what has no
property at all (hugetlb, rdma, io.max by device number, `unified` keys such as memory.oom.group). The properties
are what systemd re-applies on its own (daemon-reload), so that it never resets a container's limits.

Devices are not handed to systemd: crisp attaches its own eBPF device filter to the delegated unit's cgroup.
A property is jeepney's (name, (D-Bus signature, value)).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from runtime import errors
from runtime.cgroups.cgroup import all_settings
from runtime.cgroups.resources import Setting

Property = tuple[str, tuple[str, Any]]

UNLIMITED = 2**64 - 1  # systemd's "infinity" for byte and task limits and for the CPU quota
DEFAULT_CPU_PERIOD = 100_000  # microseconds, the kernel's default cpu.max period
# systemd keeps the CPU quota as a percentage: a quota per second must be a multiple of 10 ms (runc rounds up too)
CPU_QUOTA_STEP = 10_000
_CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")

# interface file -> unit property, for the files whose value is a byte count or "max"
_BYTE_LIMITS = {
    "memory.max": "MemoryMax",
    "memory.high": "MemoryHigh",
    "memory.low": "MemoryLow",
    "memory.min": "MemoryMin",
    "memory.swap.max": "MemorySwapMax",
    "pids.max": "TasksMax",
}
ACCOUNTING = ("CPUAccounting", "MemoryAccounting", "IOAccounting", "TasksAccounting")


def _accounting() -> list[Property]:
    return [(name, ("b", True)) for name in ACCOUNTING]


def scope_properties(*, slice_name: str, pids: Sequence[int], description: str, delegate: bool = True
                     ) -> list[Property]:
    """A scope for processes that already run (`pids`), in `slice_name`; delegated (a container's): what happens
    inside its cgroup (limits, device filter, sub-cgroups) is crisp's and the container's, not systemd's. No default
    dependencies: it must not be stopped with basic.target at shutdown before its pod is done."""
    if not pids:
        raise errors.InvalidArgument("a scope needs at least one process")
    props: list[Property] = [
        ("Description", ("s", description)),
        ("Slice", ("s", slice_name)),
        ("PIDs", ("au", [int(pid) for pid in pids])),
        ("DefaultDependencies", ("b", False)),
    ]
    if delegate:
        props += [("Delegate", ("b", True)), *_accounting()]
    return props


def slice_properties(*, description: str) -> list[Property]:
    """A slice (its parent follows from its name); every controller accounted, so that limits can be set in it."""
    return [("Description", ("s", description)), ("DefaultDependencies", ("b", False)), *_accounting()]


def resource_properties(resources: Mapping[str, Any]) -> list[Property]:
    """The unit properties of an OCI `linux.resources` dict (bad values raise InvalidArgument)."""
    return settings_properties(all_settings(resources))


def settings_properties(settings: Iterable[Setting]) -> list[Property]:
    out: list[Property] = []
    for setting in settings:
        out += _properties(setting)
    return out


def _properties(setting: Setting) -> list[Property]:
    file, value = setting.file, setting.value.strip()
    if file in _BYTE_LIMITS:
        return [(_BYTE_LIMITS[file], ("t", _limit(value, file)))]
    if file == "cpu.weight":
        return [("CPUWeight", ("t", _integer(value, file)))]
    if file == "cpu.max":
        return cpu_quota_properties(value)
    if file == "cpuset.cpus":
        return [("AllowedCPUs", ("ay", cpu_mask(value, file)))]
    if file == "cpuset.mems":
        return [("AllowedMemoryNodes", ("ay", cpu_mask(value, file)))]
    if file == "io.weight" and " " not in value:
        return [("IOWeight", ("t", _integer(value.removeprefix("default "), file)))]
    if file == "io.bfq.weight" and " " not in value and setting.fallback is not None:
        # BFQ's weight has cgroup v1's range; IOWeight has io.weight's, which the fallback carries
        return [("IOWeight", ("t", _integer(setting.fallback[1], file)))]
    return []


def _integer(value: str, file: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise errors.InvalidArgument(f"{file}: {value!r} is not a number") from None
    if number < 0:
        raise errors.InvalidArgument(f"{file}: {value!r} must not be negative")
    return number


def _limit(value: str, file: str) -> int:
    return UNLIMITED if value == "max" else _integer(value, file)


def cpu_quota_properties(value: str) -> list[Property]:
    """cpu.max ("quota period", "max period", "quota", "max") as CPUQuotaPerSecUSec (+ CPUQuotaPeriodUSec)."""
    parts = value.split()
    if not 1 <= len(parts) <= 2:
        raise errors.InvalidArgument(f"cpu.max: {value!r} is not 'quota [period]'")
    period = _integer(parts[1], "cpu.max") if len(parts) == 2 else 0
    if parts[0] == "max":
        per_second = UNLIMITED
    else:
        quota = _integer(parts[0], "cpu.max")
        per_second = math.ceil(quota * 1_000_000 / (period or DEFAULT_CPU_PERIOD))
        per_second = math.ceil(per_second / CPU_QUOTA_STEP) * CPU_QUOTA_STEP
    out: list[Property] = [("CPUQuotaPerSecUSec", ("t", per_second))]
    if period:
        out.append(("CPUQuotaPeriodUSec", ("t", period)))
    return out


def cpu_mask(value: str, file: str = "cpuset.cpus") -> bytes:
    """A CPU (or memory node) list like "0-3,8" as systemd's bit mask: bit n%8 of byte n//8 is CPU n."""
    if not _CPU_LIST.match(value):
        raise errors.InvalidArgument(f"{file}: {value!r} is not a list like 0-3,5")
    cpus: set[int] = set()
    for part in value.split(","):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if high < low:
            raise errors.InvalidArgument(f"{file}: bad range {part!r}")
        cpus.update(range(low, high + 1))
    mask = bytearray(max(cpus) // 8 + 1)
    for cpu in cpus:
        mask[cpu // 8] |= 1 << (cpu % 8)
    return bytes(mask)
