"""pids controller: pids.max (a limit of -1 is "max", 0 is unset); pids.current."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runtime.cgroups import fs
from runtime.cgroups.resources import Setting, integer, section
from runtime.cgroups.stats import PidsStats

CONTROLLER = "pids"


def settings(resources: Mapping[str, Any]) -> list[Setting]:
    limit = integer(section(resources, "pids"), "limit", "pids")
    if limit == 0:
        return []
    return [Setting(("pids.limit",), CONTROLLER, "pids.max", str(limit) if limit > 0 else "max")]


def read_stats(cgroup_dir: Path) -> PidsStats | None:
    current = fs.read_single_int(cgroup_dir / "pids.current")
    if current is None:
        return None
    return PidsStats(current=current, limit=fs.read_single_int(cgroup_dir / "pids.max"))
