"""cgroup v2 for crisp: one manager behind the `CgroupManager` protocol, one module per controller.

Typical use (crispd and the executor program):

    manager = CgroupV2Manager.discover()                      # the cgroup2 mount, from /proc/self/mountinfo
    pod = paths.pod_cgroup_path(cgroup_parent, pod_uid, base)  # the kubelet's parent, or <base>/pod<uid>
    path = paths.container_cgroup_path(pod, container_id)      # <pod>/crisp-<id>
    missing = manager.missing_controllers(resources, path)    # crispd, before creating anything
    cg = manager.create(path)
    cg.apply(resources)                                       # OCI linux.resources; again for live updates
    cg.set_device_filter(rules_from_oci(resources.get("devices", [])))
    cg.add_process(pid)
    cg.stats(); cg.freeze(); cg.thaw(); cg.kill(); cg.remove()

Every call does blocking cgroupfs I/O (kill, freeze and remove also wait, bounded by their timeout): crispd makes
them from a worker thread, never on its event loop. docs/contracts.md has the layout and ownership rules.
"""

from runtime.cgroups import paths
from runtime.cgroups.cgroup import Cgroup
from runtime.cgroups.devices import DEFAULT_RULES, DeviceRule, rules_from_oci
from runtime.cgroups.manager import CgroupManager, CgroupV2Manager
from runtime.cgroups.paths import find_cgroup2_mount
from runtime.cgroups.resources import MissingLimit, drop_limits, enforceable_limits
from runtime.cgroups.stats import CgroupStats, CpuStats, IoStats, MemoryStats, PidsStats, Pressure, PsiLine

__all__ = [
    "DEFAULT_RULES",
    "Cgroup",
    "CgroupManager",
    "CgroupStats",
    "CgroupV2Manager",
    "CpuStats",
    "DeviceRule",
    "IoStats",
    "MemoryStats",
    "MissingLimit",
    "PidsStats",
    "Pressure",
    "PsiLine",
    "drop_limits",
    "enforceable_limits",
    "find_cgroup2_mount",
    "paths",
    "rules_from_oci",
]
