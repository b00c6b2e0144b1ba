"""runc and crun, as Debian ships them, under the VM's pure cgroup v2 kernel: the limits of an OCI spec land in
the container's cgroup files and are enforced. These are the reference for crisp's own executor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.vm.guest.support import Cgroup, OciRuntime, oci_config, wait_until, write_bundle

MiB = 1 << 20
RESOURCES = {
    "memory": {"limit": 32 * MiB, "swap": 32 * MiB},
    "pids": {"limit": 20},
    "cpu": {"quota": 20000, "period": 100000, "shares": 512},
}
LIMIT_FILES = ("memory.max", "memory.swap.max", "pids.max", "cpu.max", "cpu.weight")


def container_cgroup(parent: Cgroup, container_id: str) -> str:
    """linux.cgroupsPath: relative to the cgroup2 mount, as crisp writes it."""
    return f"/{parent.path.name}/{container_id}"


def test_oci_runtime_writes_the_limits(oci_runtime: OciRuntime, container_ids: Callable[[OciRuntime], str],
                                       cgroup: Cgroup, tmp_path: Path) -> None:
    container_id = container_ids(oci_runtime)
    bundle = write_bundle(tmp_path / "bundle", oci_config(
        ["/bin/sleep", "600"], container_cgroup(cgroup, container_id), RESOURCES))
    pid = oci_runtime.create(container_id, bundle)
    leaf = Cgroup(cgroup.path / container_id)
    assert pid in leaf.pids()
    assert leaf.read("memory.max") == str(32 * MiB)
    assert leaf.read("memory.swap.max") == "0"  # OCI swap is memory+swap; v2's swap file is swap alone
    assert leaf.read("pids.max") == "20"
    assert leaf.read("cpu.max") == "20000 100000"
    print({name: leaf.read(name) for name in LIMIT_FILES})


def test_oci_runtime_container_is_oom_killed(oci_runtime: OciRuntime, container_ids: Callable[[OciRuntime], str],
                                             cgroup: Cgroup, tmp_path: Path) -> None:
    container_id = container_ids(oci_runtime)
    allocate = f"x=$(head -c {64 * MiB} /dev/zero | tr '\\000' x); echo survived"
    bundle = write_bundle(tmp_path / "bundle", oci_config(
        ["/bin/sh", "-c", allocate], container_cgroup(cgroup, container_id), {"memory": {"limit": 16 * MiB}}))
    oci_runtime.create(container_id, bundle)
    oci_runtime("start", container_id)
    leaf = Cgroup(cgroup.path / container_id)
    wait_until(lambda: oci_runtime.state(container_id)["status"] == "stopped", 120, "the container to stop")
    assert leaf.flat("memory.events")["oom_kill"] >= 1


def test_runc_and_crun_write_the_same_limits(cgroup: Cgroup, tmp_path: Path,
                                              container_ids: Callable[[OciRuntime], str]) -> None:
    written: dict[str, dict[str, str]] = {}
    for name in ("runc", "crun"):
        runtime = OciRuntime(name, tmp_path / f"{name}-state")
        container_id = container_ids(runtime)
        bundle = write_bundle(tmp_path / name, oci_config(
            ["/bin/sleep", "600"], container_cgroup(cgroup, container_id), RESOURCES))
        runtime.create(container_id, bundle)
        leaf = Cgroup(cgroup.path / container_id)
        written[name] = {file: leaf.read(file) for file in LIMIT_FILES}
    assert written["runc"] == written["crun"]
