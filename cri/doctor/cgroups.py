"""What this node's cgroup v2 can and cannot do for pods: for `crispd doctor` and for Status's verbose info.

crisp uses six controllers; without one, the limits it enforces are refused or dropped (`[cgroup]
missing_controller`), and without memory accounting there are no memory stats or OOM events to report. Status and
the doctor say so from the same words.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cri.doctor.report import Check, fail, ok, warn
from runtime import errors
from runtime.cgroups import CgroupV2Manager
from runtime.cgroups.paths import SYS_FS_CGROUP
from runtime.cgroups.resources import MISSING_WARN

if TYPE_CHECKING:
    from cri.config import Config

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


PURE_V2 = ("a pure cgroup v2 host (kernel command line systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all) has "
           "every controller")


def check_cgroups(config: Config) -> list[Check]:
    """The cgroup2 mount, whether crisp may make its cgroups there, and the controllers pods get."""
    try:
        manager = CgroupV2Manager.discover()
    except errors.FailedPrecondition as exc:
        return [fail("cgroup v2", str(exc), "mount cgroup2 (crisp is cgroup v2 only); " + PURE_V2)]
    checks = []
    where = str(manager.mount)
    if manager.mount != Path(SYS_FS_CGROUP):
        where += " (a hybrid host: the v1 hierarchies under /sys/fs/cgroup are the host's; crisp never writes there)"
    base = manager.mount / config.cgroup.base.strip("/")
    existing = next(p for p in (base, *base.parents) if p.exists())
    if not os.access(existing, os.W_OK):
        checks.append(fail("cgroup v2", f"{where}: crisp cannot make cgroups under {existing}",
                           "run crispd as root, with write access to the cgroup2 mount"))
    else:
        checks.append(ok("cgroup v2", where))
    available = pod_controllers(manager, config.cgroup.base)
    missing = [c for c in USED_CONTROLLERS if c not in available]
    policy = config.cgroup.missing_controller
    if not missing:
        checks.append(ok("cgroup controllers", f"pods get {', '.join(USED_CONTROLLERS)}"))
        return checks
    fate = "dropped with a warning" if policy == MISSING_WARN else "refused (FAILED_PRECONDITION)"
    found = (f"pods get {', '.join(sorted(available)) or 'no controller'}, not {', '.join(missing)}: limits "
             f"needing those are {fate} (cgroup.missing_controller = \"{policy}\")")
    if "memory" in missing:
        found += ", memory stats and OOM counts are left out"
    if "cpu" in missing and policy != MISSING_WARN:
        checks.append(fail(
            "cgroup controllers", found + ". The kubelet asks every container for cpu_shares (even a BestEffort "
            "one, for 2), so its pods are refused",
            f'set [cgroup] missing_controller = "{MISSING_WARN}" to run pods without these limits; ' + PURE_V2))
    else:
        fix = (f'limits pods ask for are {"dropped" if policy == MISSING_WARN else "refused"}: fine for tests, '
               f"not for production; {PURE_V2}")
        checks.append(warn("cgroup controllers", found, fix))
    return checks
