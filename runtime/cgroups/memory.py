"""memory controller: memory.max, memory.low (reservation), memory.swap.max; memory.current/stat/events."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.cgroups import fs
from runtime.cgroups.resources import Setting, integer, section
from runtime.cgroups.stats import MemoryStats

CONTROLLER = "memory"


def _bytes(value: int) -> str:
    return "max" if value < 0 else str(value)


def swap_max(swap: int, memory: int) -> int:
    """cgroup v2's memory.swap.max from the v1-style (OCI, CRI) memory+swap limit `swap` and memory limit.

    v2 limits swap alone, so it is swap - memory. 0 = unset, -1 = unlimited; an unlimited memory with swap unset
    means unlimited swap too (as with v1, where memsw followed memory). Returns -1 for "max", 0 for "unset"
    unless swap == memory (no swap at all), which `settings` writes as "0".
    """
    if memory == -1 and swap == 0:
        return -1
    if swap in (-1, 0):
        return swap
    if memory in (0, -1):
        raise errors.InvalidArgument("linux.resources.memory.swap needs a memory limit")
    if memory < 0:
        raise errors.InvalidArgument(f"linux.resources.memory.limit: invalid value {memory}")
    if swap < memory:
        raise errors.InvalidArgument(f"linux.resources.memory.swap ({swap}) must be >= memory.limit ({memory})")
    return swap - memory


def settings(resources: Mapping[str, Any]) -> list[Setting]:
    mem = section(resources, "memory")
    out = []
    limit = integer(mem, "limit", "memory")
    if limit:
        if limit < -1:
            raise errors.InvalidArgument(f"linux.resources.memory.limit: invalid value {limit}")
        out.append(Setting(("memory.limit",), CONTROLLER, "memory.max", _bytes(limit)))
    reservation = integer(mem, "reservation", "memory")
    if reservation:
        out.append(Setting(("memory.reservation",), CONTROLLER, "memory.low", _bytes(reservation)))
    swap = integer(mem, "swap", "memory")
    value = swap_max(swap, limit)
    if value or swap:
        # swap == memory limit: no swap at all. "max" and "0" are tolerated without swap accounting (the file is
        # missing then, and there is no swap to limit), as runc does. A swap limit that only follows from the
        # memory limit (no swap, or unlimited swap with unlimited memory) is the memory limit's: a missing
        # controller is then reported as that limit alone, the one that was asked for.
        text = _bytes(value)
        keys = ("memory.swap",) if swap and swap != limit else ("memory.limit",)
        out.append(Setting(keys, CONTROLLER, "memory.swap.max", text, optional=text in ("max", "0")))
    return out


def read_stats(cgroup_dir: Path) -> MemoryStats | None:
    current = fs.read_single_int(cgroup_dir / "memory.current")
    if current is None:
        return None
    return MemoryStats(
        current=current,
        peak=fs.read_single_int(cgroup_dir / "memory.peak"),
        limit=fs.read_single_int(cgroup_dir / "memory.max"),
        swap_current=fs.read_single_int(cgroup_dir / "memory.swap.current"),
        stat=fs.read_flat_keyed(cgroup_dir / "memory.stat") or {},
        events=fs.read_flat_keyed(cgroup_dir / "memory.events") or {},
    )
