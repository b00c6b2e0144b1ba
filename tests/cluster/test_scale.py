"""Figures, not assertions on timings: a Deployment scaled from 1 to 30 replicas on crisp, the pods per second it
takes, and crispd's memory and CPU time over it (printed in the run's summary)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.onenode import Cluster
from tests.cluster.workloads import container, deployment, is_ready, pods

REPLICAS = 30


def _crispd_usage(pid: int) -> tuple[float, int, int]:
    """crispd's CPU time (s), resident and peak resident memory (KiB)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return cpu, int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


@pytest.mark.extended
def test_a_30_replica_scale_up(cluster: Cluster, record_property: Callable[[str, object], None]) -> None:
    kubectl = cluster.kubectl
    assert cluster.crisp.daemon.proc is not None
    crispd = cluster.crisp.daemon.proc.pid
    kubectl.apply(deployment("many", 1, [container("nginx", cluster.nginx, None)]))
    kubectl.run("rollout", "status", "deployment/many", "--timeout=120s", timeout=150)
    cpu_before, rss_before, _ = _crispd_usage(crispd)
    started = time.monotonic()
    kubectl.run("scale", "deployment/many", f"--replicas={REPLICAS}")
    kubectl.run("rollout", "status", "deployment/many", "--timeout=600s", timeout=630)
    elapsed = time.monotonic() - started
    cpu_after, rss_after, peak = _crispd_usage(crispd)
    ready = [p for p in pods(kubectl, "many") if is_ready(p)]
    assert len(ready) == REPLICAS
    record_property("summary", f"scale-up 1 -> {REPLICAS}: {(REPLICAS - 1) / elapsed:.2f} pods/s ({elapsed:.1f} s); "
                               f"crispd CPU {cpu_after - cpu_before:.1f} s over it, RSS {rss_before // 1024} -> "
                               f"{rss_after // 1024} MiB (peak {peak // 1024} MiB); load average "
                               f"{os.getloadavg()[0]:.1f}")
    kubectl.run("delete", "deployment/many", "--cascade=foreground", "--timeout=300s", timeout=330)
