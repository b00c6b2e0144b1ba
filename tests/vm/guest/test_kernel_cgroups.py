"""The VM tier's kernel enforces cgroup v2 limits: plain cgroup files, no crisp code. These prove the tier itself
(a limit that is not written makes them fail) and document what the kernel reports when a limit bites."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.vm.guest.support import BUSYBOX, Cgroup, allocate_and_hold, wait_until

MiB = 1 << 20
ALLOCATE_32M = allocate_and_hold(32)  # twice the tight limit below, far less than the VM's RAM


def test_the_kernel_is_cgroup_v2_only(cgroup_root: Path) -> None:
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    types = {line.partition(" - ")[2].split()[0] for line in mounts}
    assert "cgroup" not in types, "a cgroup v1 hierarchy is mounted"
    assert "cgroup_no_v1=all" in Path("/proc/cmdline").read_text()
    controllers = set((cgroup_root / "cgroup.controllers").read_text().split())
    assert {"cpu", "cpuset", "io", "memory", "pids", "hugetlb"} <= controllers


def test_memory_max_oom_kills_and_counts_it(cgroup: Cgroup) -> None:
    cgroup.write("memory.max", str(16 * MiB))
    cgroup.write("memory.swap.max", "0")
    done = cgroup.run(ALLOCATE_32M, timeout=120)
    assert b"survived" not in done.stdout
    assert done.returncode == -signal.SIGKILL
    events = cgroup.flat("memory.events")
    assert events["oom_kill"] >= 1, events
    assert events["max"] >= 1, events
    assert int(cgroup.read("memory.peak")) <= 16 * MiB


def test_memory_below_the_limit_is_not_killed(cgroup: Cgroup) -> None:
    cgroup.write("memory.max", str(128 * MiB))
    done = cgroup.run(ALLOCATE_32M, timeout=120)
    assert done.returncode == 0, done.stderr
    assert b"survived" in done.stdout
    assert cgroup.flat("memory.events")["oom_kill"] == 0


def test_pids_max_stops_a_fork_bomb(cgroup: Cgroup) -> None:
    """A fork bomb bounded to depth 9 would make 1023 processes; pids.max stops it at 24."""
    cgroup.write("pids.max", "24")
    bomb = "b() { if [ $1 -gt 0 ]; then b $(($1-1)) & b $(($1-1)) & wait; else exec sleep 600; fi; }; b 9"
    proc = cgroup.spawn([str(BUSYBOX), "sh", "-c", bomb], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: cgroup.flat("pids.events")["max"] > 0 or int(cgroup.read("pids.current")) > 100, 120,
                   "the fork bomb to hit pids.max")
        assert cgroup.flat("pids.events")["max"] > 0
        assert int(cgroup.read("pids.current")) <= 24
    finally:
        cgroup.write("cgroup.kill", "1")
        proc.wait(timeout=60)
        assert proc.stderr is not None
        proc.stderr.close()
    wait_until(lambda: not cgroup.populated(), 30, "the fork bomb's cgroup to empty")


def test_cpu_max_throttles_and_cpu_stat_shows_it(cgroup: Cgroup) -> None:
    cgroup.write("cpu.max", "10000 100000")  # 10% of one CPU
    proc = cgroup.spawn([str(BUSYBOX), "sh", "-c", "while :; do :; done"])
    try:
        wait_until(lambda: cgroup.flat("cpu.stat")["nr_periods"] >= 10, 120, "ten cpu.max periods to pass")
    finally:
        proc.kill()
        proc.wait()
    stat = cgroup.flat("cpu.stat")
    assert stat["nr_throttled"] > 0, stat
    assert stat["throttled_usec"] > 0, stat

