"""crisp's cgroup code (runtime.cgroups) under a pure cgroup v2 kernel with every controller: the limits it writes
from OCI/CRI values are enforced, live updates bite, pod-level limits hold for all containers of a pod, and
removal leaves nothing. Processes are moved in with crisp's own `add_process` before they start their work."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.cgroups import Cgroup, CgroupV2Manager, paths
from runtime.cgroups.cpu import shares_to_weight
from tests.vm.guest.support import BUSYBOX, HOLD, allocate_and_hold, release, start_held, unique_name, wait_until

MiB = 1 << 20


@pytest.fixture
def manager() -> CgroupV2Manager:
    return CgroupV2Manager.discover()


@pytest.fixture
def base(manager: CgroupV2Manager) -> Iterator[Cgroup]:
    """This test's private tree `/crisp-vmtest-<hex>`, made by crisp; killed and removed by crisp afterwards."""
    cg = manager.create(f"/{unique_name()}")
    try:
        yield cg
    finally:
        cg.kill(timeout=30)
        cg.remove(timeout=30)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts: killed (if still running) and reaped afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def run_in(cg: Cgroup, argv: list[str], procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    proc = start_held(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    procs.append(proc)
    cg.add_process(proc.pid)
    release(proc)
    return proc


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> tuple[int, bytes]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_memory_limit_is_enforced_and_the_oom_kill_counted(manager: CgroupV2Manager, base: Cgroup,
                                                           procs: list[subprocess.Popen[bytes]]) -> None:
    cg = manager.create(paths.container_cgroup_path(base.path, "oom"))
    cg.apply({"memory": {"limit": 16 * MiB, "swap": 16 * MiB}})  # memory+swap == memory: no swap at all
    assert (cg.dir / "memory.max").read_text().strip() == str(16 * MiB)
    assert (cg.dir / "memory.swap.max").read_text().strip() == "0"
    status, out = finish(run_in(cg, allocate_and_hold(32), procs))
    assert (status, out) == (-signal.SIGKILL, b"")
    memory = cg.stats().memory
    assert memory is not None
    assert memory.events["oom_kill"] >= 1
    assert memory.peak is not None and memory.peak <= 16 * MiB


def test_cpu_values_from_cri_weight_and_throttling(manager: CgroupV2Manager, base: Cgroup,
                                                   procs: list[subprocess.Popen[bytes]]) -> None:
    # CRI LinuxContainerResources cpu_shares / cpu_quota / cpu_period travel into the OCI spec unchanged
    cg = manager.create(paths.container_cgroup_path(base.path, "cpu"))
    cg.apply({"cpu": {"shares": 512, "quota": 10000, "period": 100000}})
    assert (cg.dir / "cpu.weight").read_text().strip() == str(shares_to_weight(512)) == "59"
    assert (cg.dir / "cpu.max").read_text().strip() == "10000 100000"
    proc = run_in(cg, [str(BUSYBOX), "sh", "-c", "while :; do :; done"], procs)

    def periods() -> int:
        stats = cg.stats().cpu
        assert stats is not None and stats.nr_periods is not None
        return stats.nr_periods

    wait_until(lambda: periods() >= 10, 120, "ten cpu.max periods of a busy loop")
    proc.kill()
    cpu = cg.stats().cpu
    assert cpu is not None
    assert cpu.nr_throttled is not None and cpu.nr_throttled > 0, cpu
    assert cpu.throttled_usec is not None and cpu.throttled_usec > 0, cpu


@pytest.mark.parametrize(("shares", "weight"), [(2, 1), (1024, 100), (262144, 10000), (0, 100)])
def test_cpu_shares_map_onto_the_whole_weight_range(manager: CgroupV2Manager, base: Cgroup, shares: int,
                                                    weight: int) -> None:
    cg = manager.create(paths.container_cgroup_path(base.path, "weight"))
    cg.apply({"cpu": {"shares": shares}})  # 0 = unset: the kernel's default stays
    assert (cg.dir / "cpu.weight").read_text().strip() == str(weight)


def test_pids_limit_stops_a_fork_bomb(manager: CgroupV2Manager, base: Cgroup,
                                      procs: list[subprocess.Popen[bytes]]) -> None:
    cg = manager.create(paths.container_cgroup_path(base.path, "bomb"))
    cg.apply({"pids": {"limit": 24}})
    bomb = "b() { if [ $1 -gt 0 ]; then b $(($1-1)) & b $(($1-1)) & wait; else exec sleep 600; fi; }; b 9"
    run_in(cg, [str(BUSYBOX), "sh", "-c", bomb], procs)  # unchecked: 1023 processes

    def current() -> int:
        pids = cg.stats().pids
        assert pids is not None and pids.current is not None
        return pids.current

    def refused() -> int:
        return int((cg.dir / "pids.events").read_text().split()[1])

    wait_until(lambda: refused() > 0 or current() > 100, 120, "the fork bomb to hit pids.max")
    assert current() <= 24
    assert refused() > 0
    cg.kill(timeout=30)
    assert cg.procs() == []


def test_live_update_of_memory_below_usage_kills(manager: CgroupV2Manager, base: Cgroup,
                                                 procs: list[subprocess.Popen[bytes]]) -> None:
    cg = manager.create(paths.container_cgroup_path(base.path, "live"))
    cg.apply({"memory": {"limit": 96 * MiB}})
    proc = run_in(cg, allocate_and_hold(24, HOLD), procs)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"holding\n"
    memory = cg.stats().memory
    assert memory is not None and memory.current is not None
    assert memory.current >= 24 * MiB and memory.events["oom_kill"] == 0
    cg.apply({"memory": {"limit": 12 * MiB}})  # the kubelet's UpdateContainerResources, below what it holds
    assert (cg.dir / "memory.max").read_text().strip() == str(12 * MiB)
    assert proc.wait(timeout=120) == -signal.SIGKILL
    memory = cg.stats().memory
    assert memory is not None and memory.events["oom_kill"] >= 1


def test_live_update_of_cpu_and_pids(manager: CgroupV2Manager, base: Cgroup,
                                     procs: list[subprocess.Popen[bytes]]) -> None:
    cg = manager.create(paths.container_cgroup_path(base.path, "live"))
    cg.apply({"cpu": {"shares": 1024, "quota": 50000, "period": 100000}, "pids": {"limit": 50}})
    run_in(cg, [str(BUSYBOX), "sleep", "600"], procs)
    cg.apply({"cpu": {"shares": 2048, "quota": 20000, "period": 50000}, "pids": {"limit": 1}})
    assert (cg.dir / "cpu.max").read_text().strip() == "20000 50000"
    assert (cg.dir / "cpu.weight").read_text().strip() == str(shares_to_weight(2048))
    assert (cg.dir / "pids.max").read_text().strip() == "1"
    # one process already there: the lowered limit lets it be but refuses any new one
    forker = run_in(cg, [str(BUSYBOX), "sh", "-c", f"{BUSYBOX} true && echo forked"], procs)
    status, out = finish(forker)
    assert out == b"" and status != 0
    assert int((cg.dir / "pids.events").read_text().split()[1]) > 0


def test_pod_level_limits_hold_for_all_its_containers(manager: CgroupV2Manager, base: Cgroup,
                                                      procs: list[subprocess.Popen[bytes]]) -> None:
    pod = manager.create(paths.pod_cgroup_path("", "1234-abcd", base=base.path))
    pod.apply({"memory": {"limit": 32 * MiB, "swap": 32 * MiB}, "pids": {"limit": 40}})
    first = manager.create(paths.container_cgroup_path(pod.path, "first"))
    second = manager.create(paths.container_cgroup_path(pod.path, "second"))
    assert (first.dir / "memory.max").read_text().strip() == "max"  # no limit of its own
    holder = run_in(first, allocate_and_hold(12, HOLD), procs)
    assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
    # filling 12 MiB peaks at ~26 MiB: each container fits in the pod alone, not next to the other's 12 MiB
    grower = run_in(second, allocate_and_hold(12), procs)
    grower.wait(timeout=120)
    wait_until(lambda: holder.poll() == -signal.SIGKILL or grower.returncode == -signal.SIGKILL, 30,
               "the OOM killer to kill one of the pod's containers")
    memory = pod.stats().memory
    assert memory is not None and memory.events["oom_kill"] >= 1
    assert memory.peak is not None and memory.peak <= 32 * MiB


def test_removal_leaves_nothing(manager: CgroupV2Manager, base: Cgroup,
                                procs: list[subprocess.Popen[bytes]]) -> None:
    pod = manager.create(paths.pod_cgroup_path("", "gone", base=base.path))
    pod.apply({"memory": {"limit": 64 * MiB}, "pids": {"limit": 40}})
    containers = [manager.create(paths.container_cgroup_path(pod.path, name)) for name in ("a", "b")]
    for cg in containers:
        cg.apply({"cpu": {"quota": 50000, "period": 100000}})
        run_in(cg, [str(BUSYBOX), "sh", "-c", f"{BUSYBOX} sleep 600 & {BUSYBOX} sleep 600 & wait"], procs)
    wait_until(lambda: sum(len(cg.procs()) for cg in containers) == 6, 60, "two shells with two sleeps each")
    pids = [pid for cg in containers for pid in cg.procs()]
    pod.kill(timeout=30)
    pod.remove(timeout=30)
    assert not pod.dir.exists()
    assert [entry for entry in base.dir.iterdir() if entry.is_dir()] == []
    for proc in procs:
        proc.wait(timeout=30)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
