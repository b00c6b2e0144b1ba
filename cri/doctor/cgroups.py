"""What this node's cgroup v2 can and cannot do for pods: for `crispd doctor` and for Status's verbose info.

crisp uses six controllers; without one, the limits it enforces are refused or dropped (`[cgroup]
missing_controller`), and without memory accounting there are no memory stats or OOM events to report. Status and
the doctor say so from the same words.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cri.doctor.report import Check, fail, ok, warn
from runtime import errors
from runtime.cgroups import CgroupV2Manager
from runtime.cgroups import paths as cgroup_paths
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


def pod_controllers(manager: CgroupV2Manager, base: str, systemd: bool = False) -> frozenset[str]:
    """The controllers a pod cgroup crisp makes gets: under `base` (`[cgroup] base`), or with the systemd driver
    a slice under crisp.slice."""
    return manager.controllers_for(_pod_cgroup(base, systemd))


def _pod_cgroup(base: str, systemd: bool) -> str:
    return cgroup_paths.Layout(systemd=systemd, base=base).pod("", "doctor")


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
    """The cgroup driver, the cgroup2 mount, whether crisp may make its cgroups there, and the controllers pods
    get."""
    checks = [check_cgroup_driver(config)]
    try:
        manager = CgroupV2Manager.discover()
    except errors.FailedPrecondition as exc:
        return [*checks, fail("cgroup v2", str(exc), "mount cgroup2 (crisp is cgroup v2 only); " + PURE_V2)]
    where = str(manager.mount)
    if manager.mount != Path(SYS_FS_CGROUP):
        where += " (a hybrid host: the v1 hierarchies under /sys/fs/cgroup are the host's; crisp never writes there)"
    systemd = config.cgroup.driver == "systemd"
    pod = _pod_cgroup(config.cgroup.base, systemd)
    base = manager.mount / cgroup_paths.parent(pod).strip("/")
    existing = next(p for p in (base, *base.parents) if p.exists())
    if not os.access(existing, os.W_OK):
        checks.append(fail("cgroup v2", f"{where}: crisp cannot make cgroups under {existing}",
                           "run crispd as root, with write access to the cgroup2 mount"))
    else:
        checks.append(ok("cgroup v2", where))
    available = pod_controllers(manager, config.cgroup.base, systemd)
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


SYSTEMD_BOOTED = Path("/run/systemd/system")  # sd_booted(3)'s test: PID 1 is systemd
SYSTEMD_TIMEOUT = 5.0


def _pid1() -> str:
    try:
        return Path("/proc/1/comm").read_text().strip()
    except OSError:
        return "unknown"


async def _ask_systemd(bus: str) -> str | None:
    """crisp.slice's state, asked of systemd over D-Bus (read-only: GetUnit and a property)."""
    from runtime.systemd.manager import Systemd

    systemd = Systemd(bus=bus, timeout=SYSTEMD_TIMEOUT)
    try:
        return await systemd.unit_state(cgroup_paths.SYSTEMD_SLICE)
    finally:
        await systemd.close()


def check_cgroup_driver(config: Config) -> Check:
    """`[cgroup] driver`: cgroupfs needs nothing more; systemd needs systemd as PID 1, reachable over D-Bus."""
    booted = SYSTEMD_BOOTED.is_dir()
    if config.cgroup.driver != "systemd":
        where = f"crisp's cgroups are directories under {config.cgroup.base}"
        if booted:
            return ok("cgroup driver", f'cgroupfs: {where}; PID 1 is systemd: [cgroup] driver = "systemd" makes them '
                      "systemd units (kind and minikube nodes, a kubelet with cgroupDriver systemd)")
        return ok("cgroup driver", f"cgroupfs: {where} (PID 1 is {_pid1()}, not systemd)")
    fix = 'set [cgroup] driver = "cgroupfs", or run crispd on a node booted with systemd'
    if not booted:
        return fail("cgroup driver", f"systemd, but PID 1 is {_pid1()}, not systemd ({SYSTEMD_BOOTED} is missing): "
                    "crisp cannot make its pods' slices and scopes", fix)
    bus = config.cgroup.systemd_bus
    # the D-Bus client is loaded here, not with the module: crispd's RuntimeStatus imports this module
    from runtime.systemd.bus import BusError, find_endpoint

    try:
        endpoint = find_endpoint(bus)
        state = asyncio.run(_ask_systemd(bus))
    except (errors.CrispError, BusError, OSError, TimeoutError) as exc:
        return fail("cgroup driver", f"systemd, but systemd does not answer over D-Bus (cgroup.systemd_bus = "
                    f'"{bus}"): {exc}', "run crispd as root, where systemd's private socket /run/systemd/private or "
                    "the system bus (dbus-daemon) is reachable; " + fix)
    return ok("cgroup driver", f"systemd: PID 1 answers over {endpoint} ({cgroup_paths.SYSTEMD_SLICE} is "
              f"{state or 'not loaded yet'}): pods are slices under it, containers and pod inits scopes")
