"""crispd's stats code under a pure cgroup v2 kernel with every controller: what the hybrid development hosts
cannot show. A memory allocator's working set rises in the CRI MemoryUsage and agrees with the cgroup's files;
PSI is reported; the cAdvisor metrics that need the cpu and memory controllers (the ones critest's pod metrics spec
misses on the hosts) are all there. The same code paths as ContainerStats and ListPodSandboxMetrics in crispd:
`StatsCollector.cgroups` reads, `cri.usage` and `cri.pod_metrics` convert."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator

import pytest

from cri.pod_metrics import _cgroup_metrics, _Metrics
from cri.stats import MIN_RATE_NS, CgroupRequest, CgroupSample, StatsCollector
from cri.usage import cpu_usage, io_usage, memory_usage
from runtime.cgroups import Cgroup, CgroupV2Manager
from tests.vm.guest.support import (
    HOLD,
    allocate_and_hold,
    read_flat_keyed,
    release,
    start_held,
    unique_name,
    wait_until,
)

MiB = 1 << 20
LIMIT = 256 * MiB
# what critest's "listing pod sandbox metrics" spec wants and the hosts' cgroups cannot give
CONTROLLER_METRICS = (
    "container_cpu_cfs_periods_total", "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total", "container_memory_cache", "container_memory_failcnt",
    "container_memory_failures_total", "container_memory_kernel_usage", "container_memory_mapped_file",
    "container_memory_max_usage_bytes", "container_memory_rss", "container_memory_swap",
    "container_memory_usage_bytes", "container_memory_working_set_bytes", "container_oom_events_total",
    "container_spec_cpu_period", "container_spec_cpu_shares",
)


@pytest.fixture
def container() -> Iterator[Cgroup]:
    """A pod cgroup with one container leaf, as crisp lays them out; killed and removed by crisp afterwards."""
    manager = CgroupV2Manager.discover()
    pod = manager.create(f"/{unique_name()}")
    try:
        leaf = manager.create(f"{pod.path}/crisp-c1")
        leaf.apply({"memory": {"limit": LIMIT}, "cpu": {"quota": 50000, "period": 100000, "shares": 512}})
        yield leaf
    finally:
        pod.kill(timeout=30)
        pod.remove(timeout=30)


def sample(collector: StatsCollector, cg: Cgroup) -> CgroupSample:
    request = CgroupRequest("c1", cg.path, processes=True, open_files=True, limits=True)
    return asyncio.run(collector.cgroups([request]))["c1"]


def test_memory_allocator_working_set_rises_and_psi_is_there(container: Cgroup) -> None:
    collector = StatsCollector(CgroupV2Manager.discover, None, 0, 1)
    idle = sample(collector, container)
    before = memory_usage(idle)
    assert before.HasField("usage_bytes") and before.usage_bytes.value < 16 * MiB

    proc = start_held(allocate_and_hold(64, HOLD), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        container.add_process(proc.pid)
        release(proc)
        assert proc.stdout is not None and proc.stdout.readline() == b"holding\n"
        current_before = int((container.dir / "memory.current").read_text())
        time.sleep(MIN_RATE_NS / 1e9 * 2)
        busy = sample(collector, container)
        current_after = int((container.dir / "memory.current").read_text())
        memory = memory_usage(busy)
        stat = read_flat_keyed(container.dir / "memory.stat")
        # working set = usage - inactive file; the allocator's 64 MiB are anonymous memory
        assert memory.working_set_bytes.value >= 60 * MiB > before.working_set_bytes.value
        assert min(current_before, current_after) - 8 * MiB <= memory.usage_bytes.value
        assert memory.usage_bytes.value <= max(current_before, current_after) + 8 * MiB
        assert memory.working_set_bytes.value <= memory.usage_bytes.value
        assert memory.rss_bytes.value >= 60 * MiB
        assert memory.available_bytes.value == LIMIT - memory.working_set_bytes.value
        assert 0 < memory.page_faults.value <= stat["pgfault"]
        assert memory.HasField("major_page_faults")
        # PSI of all three resources, in CRI units
        cpu = cpu_usage(busy)
        assert cpu.HasField("psi") and memory.HasField("psi") and io_usage(busy).HasField("psi")
        assert cpu.usage_core_nano_seconds.value > 0 and cpu.HasField("usage_nano_cores")

        metrics = _Metrics(("c1", "image", "ns", "pod", "c"))
        _cgroup_metrics(metrics, busy)
        found = {m.name: m for m in metrics.items}
        assert [name for name in CONTROLLER_METRICS if name not in found] == []
        assert found["container_memory_working_set_bytes"].value.value >= 60 * MiB
        assert found["container_spec_memory_limit_bytes"].value.value == LIMIT
        assert found["container_spec_cpu_period"].value.value == 100000
        assert found["container_spec_cpu_quota"].value.value == 50000
        assert found["container_processes"].value.value >= 1
        assert found["container_threads_max"].value.value == 0  # no pids limit: infinity
    finally:
        proc.kill()
        proc.wait()
    wait_until(lambda: memory_usage(sample(collector, container)).working_set_bytes.value < 32 * MiB, 30,
               "the working set to fall once the allocator is gone")
