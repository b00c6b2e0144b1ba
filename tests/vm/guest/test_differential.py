"""The same OCI `linux.resources` through crisp's cgroup code and through runc and crun: the same cgroup files.

The one intended difference is cpu.weight: Debian bookworm's runc 1.1.5 and crun 1.8.1 convert cpu shares
linearly (1024 -> 39), crisp uses the log-quadratic mapping of runc >= 1.3.2, crun >= 1.23 and the kubelet
(1024 -> 100): both are asserted, so a change on either side shows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from runtime.cgroups import Cgroup, CgroupV2Manager, paths
from runtime.cgroups.cpu import shares_to_weight
from tests.vm.guest.support import OciRuntime, oci_config, write_bundle

MiB = 1 << 20
RESOURCES = {
    "memory": {"limit": 64 * MiB, "reservation": 32 * MiB, "swap": 96 * MiB},
    "cpu": {"shares": 512, "quota": 30000, "period": 100000, "cpus": "0", "mems": "0"},
    "pids": {"limit": 64},
    "hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MiB}],
    "unified": {"memory.high": str(48 * MiB)},
}
FILES = ("memory.max", "memory.low", "memory.swap.max", "memory.high", "cpu.max", "cpuset.cpus", "cpuset.mems",
         "pids.max", "hugetlb.2MB.max")


def linear_weight(shares: int) -> int:
    """The conversion of runc < 1.3.2 and crun < 1.23."""
    return 1 + ((shares - 2) * 9999) // 262142


def read(cgroup_dir: Path) -> dict[str, str]:
    return {name: (cgroup_dir / name).read_text().strip() for name in (*FILES, "cpu.weight")}


def test_crisp_writes_what_the_oci_runtimes_write(base: Cgroup, tmp_path: Path,
                                                   container_ids: Callable[[OciRuntime], str]) -> None:
    manager = CgroupV2Manager.discover()
    crisp = manager.create(paths.container_cgroup_path(base.path, "crisp"))
    crisp.apply(RESOURCES)
    written = {"crisp": read(crisp.dir)}
    for name in ("runc", "crun"):
        runtime = OciRuntime(name, tmp_path / f"{name}-state")
        container_id = container_ids(runtime)
        bundle = write_bundle(tmp_path / name, oci_config(["/bin/sleep", "600"], f"{base.path}/{container_id}",
                                                          RESOURCES))
        runtime.create(container_id, bundle)
        written[name] = read(base.dir / container_id)
    assert written["crisp"]["cpu.weight"] == str(shares_to_weight(512))
    for name in ("runc", "crun"):
        assert written[name]["cpu.weight"] == str(linear_weight(512)), name
        del written[name]["cpu.weight"]
    del written["crisp"]["cpu.weight"]
    assert written["crisp"] == written["runc"] == written["crun"]
