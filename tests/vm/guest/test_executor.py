"""crisp-executor (crisp's own OCI runtime) under the pure cgroup v2 kernel: the limits of a spec are written and
enforced, the device filter holds inside the container, `delete` leaves no cgroup, and for the same bundle runc
writes the same cgroup files (cpu.weight aside: see test_differential)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runtime.cgroups import Cgroup
from runtime.cgroups.cpu import shares_to_weight
from tests.vm.guest.support import OciRuntime, oci_config, wait_until, write_bundle

MiB = 1 << 20
RESOURCES = {
    "memory": {"limit": 48 * MiB, "reservation": 16 * MiB, "swap": 64 * MiB},
    "cpu": {"shares": 512, "quota": 30000, "period": 100000, "cpus": "0", "mems": "0"},
    "pids": {"limit": 32},
    "unified": {"memory.high": str(40 * MiB)},
}
FILES = ("memory.max", "memory.low", "memory.swap.max", "memory.high", "cpu.max", "cpuset.cpus", "cpuset.mems",
         "pids.max")


@pytest.fixture
def executor(tmp_path: Path) -> OciRuntime:
    binary = shutil.which("crisp-executor")
    if binary is None:
        pytest.fail("crisp-executor is not installed in the guest's venv")
    return OciRuntime(binary, tmp_path / "executor-state")


def bundle_for(tmp_path: Path, name: str, args: list[str], cgroups_path: str, resources: dict[str, Any],
               capabilities: tuple[str, ...] = ()) -> Path:
    config = oci_config(args, cgroups_path, resources)
    for kind in ("bounding", "effective", "permitted"):
        config["process"]["capabilities"][kind] += list(capabilities)
    return write_bundle(tmp_path / name, config)


def test_executor_writes_what_runc_writes_and_delete_removes_it(
        executor: OciRuntime, base: Cgroup, tmp_path: Path, container_ids: Callable[[OciRuntime], str]) -> None:
    runc = OciRuntime("runc", tmp_path / "runc-state")
    written: dict[str, dict[str, str]] = {}
    leaves: dict[str, Path] = {}
    for runtime in (executor, runc):
        container_id = container_ids(runtime)
        bundle = bundle_for(tmp_path, runtime.name, ["/bin/sleep", "600"], f"{base.path}/{container_id}",
                            RESOURCES)
        pid = runtime.create(container_id, bundle)
        leaf = base.dir / container_id
        assert str(pid) in (leaf / "cgroup.procs").read_text().split()
        written[runtime.name] = {name: (leaf / name).read_text().strip() for name in (*FILES, "cpu.weight")}
        leaves[runtime.name] = leaf
    assert written["crisp-executor"].pop("cpu.weight") == str(shares_to_weight(512))
    assert written["runc"].pop("cpu.weight") == "20"  # Debian's runc 1.1.5: the linear mapping
    assert written["crisp-executor"] == written["runc"]
    for runtime in (executor, runc):
        container_id = leaves[runtime.name].name
        runtime("kill", container_id, "KILL")
        wait_until(lambda: not (leaves[runtime.name] / "cgroup.procs").read_text().split(), 60,  # noqa: B023
                   f"{runtime.name}'s container to die")
        runtime("delete", container_id)
        assert not leaves[runtime.name].exists(), f"{runtime.name} left {leaves[runtime.name]}"


def test_executor_container_is_oom_killed_at_its_limit(executor: OciRuntime, base: Cgroup, tmp_path: Path,
                                                       container_ids: Callable[[OciRuntime], str]) -> None:
    container_id = container_ids(executor)
    allocate = f"x=$(head -c {32 * MiB} /dev/zero | tr '\\000' x); echo survived"
    bundle = bundle_for(tmp_path, "oom", ["/bin/sh", "-c", allocate], f"{base.path}/{container_id}",
                        {"memory": {"limit": 16 * MiB, "swap": 16 * MiB}})
    executor.create(container_id, bundle)
    executor("start", container_id)
    wait_until(lambda: executor.state(container_id)["status"] == "stopped", 120, "the container to stop")
    events = (base.dir / container_id / "memory.events").read_text()
    assert "oom_kill 0" not in events, events
    assert "survived" not in executor.output(bundle)


def test_executor_pids_limit_stops_a_fork_bomb(executor: OciRuntime, base: Cgroup, tmp_path: Path,
                                               container_ids: Callable[[OciRuntime], str]) -> None:
    container_id = container_ids(executor)
    bomb = "b() { if [ $1 -gt 0 ]; then b $(($1-1)) & b $(($1-1)) & wait; else exec sleep 600; fi; }; b 9"
    bundle = bundle_for(tmp_path, "bomb", ["/bin/sh", "-c", bomb], f"{base.path}/{container_id}",
                        {"pids": {"limit": 24}})
    executor.create(container_id, bundle)
    executor("start", container_id)
    leaf = base.dir / container_id

    def refused() -> int:
        return int((leaf / "pids.events").read_text().split()[1])

    wait_until(lambda: refused() > 0 or int((leaf / "pids.current").read_text()) > 100, 120,
               "the fork bomb to hit pids.max")
    assert refused() > 0
    assert int((leaf / "pids.current").read_text()) <= 24


def test_executor_device_filter_holds_inside_the_container(executor: OciRuntime, base: Cgroup, tmp_path: Path,
                                                           container_ids: Callable[[OciRuntime], str]) -> None:
    """Deny everything but runc's defaults: mknod of any char device is allowed, opening /dev/kmsg's numbers
    (1:11) is not, /dev/null (1:3) is."""
    container_id = container_ids(executor)
    probe = ("mknod /tmp/kmsg c 1 11 && mknod /tmp/null c 1 3 && echo made; "
             "head -c 0 /tmp/null && echo null-ok; head -c 1 /tmp/kmsg >/dev/null && echo kmsg-ok; exit 0")
    bundle = bundle_for(tmp_path, "devices", ["/bin/sh", "-c", probe], f"{base.path}/{container_id}",
                        {"devices": [{"allow": False, "access": "rwm"}]}, capabilities=("CAP_MKNOD",))
    (bundle / "rootfs" / "bin" / "mknod").symlink_to("busybox")
    executor.create(container_id, bundle)
    executor("start", container_id)
    wait_until(lambda: executor.state(container_id)["status"] == "stopped", 120, "the probe to finish")
    lines = executor.output(bundle).splitlines()
    assert "made" in lines and "null-ok" in lines, lines
    assert "kmsg-ok" not in lines
    assert any("Operation not permitted" in line for line in lines), lines
