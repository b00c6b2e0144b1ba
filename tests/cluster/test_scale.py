"""Figures, not assertions on timings: a Deployment's first 3 replicas Ready, then scaled to 30 replicas on crisp, the
pods per second it takes, and crispd's memory and CPU time over it (printed in the run's summary; the kubelet tier's
tests/kubelet/test_scale.py measures the same with static pods)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from tests.cluster.onenode import Cluster
from tests.cluster.workloads import container, deployment, is_ready, pods

FIRST, REPLICAS = 3, 30


@pytest.mark.extended
def test_a_30_replica_scale_up(cluster: Cluster, record_property: Callable[[str, object], None]) -> None:
    kubectl = cluster.kubectl
    daemon = cluster.crisp.daemon
    # from a node without workloads to 3 Ready replicas, then on to 30
    started = time.monotonic()
    kubectl.apply(deployment("many", FIRST, [container("nginx", cluster.nginx, None)]))
    kubectl.run("rollout", "status", "deployment/many", "--timeout=120s", timeout=150)
    first = time.monotonic() - started
    cpu_before, rss_before, _ = daemon.usage()
    started = time.monotonic()
    kubectl.run("scale", "deployment/many", f"--replicas={REPLICAS}")
    kubectl.run("rollout", "status", "deployment/many", "--timeout=600s", timeout=630)
    elapsed = time.monotonic() - started
    cpu_after, rss_after, peak = daemon.usage()
    ready = [p for p in pods(kubectl, "many") if is_ready(p)]
    assert len(ready) == REPLICAS
    record_property("summary", f"{FIRST} Ready replicas {first:.1f} s after the Deployment was applied; scale-up "
                               f"{FIRST} -> {REPLICAS}: {(REPLICAS - FIRST) / elapsed:.2f} pods/s ({elapsed:.1f} s); "
                               f"crispd CPU {cpu_after - cpu_before:.1f} s over it, RSS {rss_before // 1024} -> "
                               f"{rss_after // 1024} MiB (peak {peak // 1024} MiB); load average "
                               f"{os.getloadavg()[0]:.1f}")
    kubectl.run("delete", "deployment/many", "--cascade=foreground", "--timeout=300s", timeout=330)
