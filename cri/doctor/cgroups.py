"""What this node's cgroup v2 can and cannot do for pods: for `crispd doctor` and for Status's verbose info.

crisp uses six controllers; without one, the limits it enforces are refused or dropped (`[cgroup]
missing_controller`), and without memory accounting there are no memory stats or OOM events to report. Status and
the doctor say so from the same words.
"""

from __future__ import annotations

from runtime.cgroups import CgroupV2Manager
from runtime.cgroups.resources import MISSING_WARN

# controller -> what needs it (the limits and the stats crisp reports)
USED_CONTROLLERS = {
    "cpu": "cpu_shares, cpu_quota and cpu_period",
    "cpuset": "cpuset_cpus and cpuset_mems",
    "memory": "memory limits, memory and swap stats, OOM event counts",
    "pids": "the pids limit",
    "io": "block I/O limits and per-device I/O stats",
    "hugetlb": "hugepage limits",
}


def pod_controllers(manager: CgroupV2Manager, base: str) -> frozenset[str]:
    """The controllers a pod cgroup under `base` (`[cgroup] base`) gets once crisp makes it."""
    return manager.controllers_for(f"{base.rstrip('/')}/pod")


def missing_controller_notes(available: frozenset[str], policy: str) -> list[str]:
    """One line per controller crisp uses that pods here will not have: what is lost, and what a limit does."""
    fate = "dropped with a warning" if policy == MISSING_WARN else "refused (FAILED_PRECONDITION)"
    notes = []
    for controller, what in USED_CONTROLLERS.items():
        if controller in available:
            continue
        note = f"no {controller} controller for pods: {what} cannot be enforced; such limits are {fate}"
        if controller == "memory":
            note += "; memory and swap are left out of the stats (not reported as 0)"
        notes.append(note)
    return notes
