"""Figures, not assertions on timings: static pods on an idle node until 3 are Ready, then 27 more at once until 30 are,
the pods per second that takes, and crispd's memory and CPU time over it (printed in the run's summary, next to the
cluster tier's same figures from a Deployment, tests/cluster/test_scale.py)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import pytest

from tests.kubelet.conftest import Node, StaticPod
from tests.kubelet.support import container, is_ready, pod_manifest, wait_until

FIRST, PODS = 3, 30


def _ready(node: Node, names: list[str]) -> int:
    wanted = {node.kubelet.pod_name(n) for n in names}
    return sum(1 for p in node.kubelet.pods() if p["metadata"]["name"] in wanted and is_ready(p))


@pytest.mark.extended
def test_30_static_pods(node: Node, static_pod: StaticPod, record_property: Callable[[str, object], None]) -> None:
    names = [f"many-{i}" for i in range(PODS)]
    web = node.web
    try:
        started = time.monotonic()
        for name in names[:FIRST]:
            static_pod(pod_manifest(name, [container("web", web.image, web.command)]))
        wait_until(lambda: _ready(node, names[:FIRST]) == FIRST, 120, f"{FIRST} pods Ready")
        first = time.monotonic() - started
        cpu_before, rss_before, _ = node.crisp.daemon.usage()
        started = time.monotonic()
        for name in names[FIRST:]:
            static_pod(pod_manifest(name, [container("web", web.image, web.command)]))
        wait_until(lambda: _ready(node, names) == PODS, 600, f"{PODS} pods Ready", interval=0.2)
        elapsed = time.monotonic() - started
        cpu_after, rss_after, peak = node.crisp.daemon.usage()
        record_property("summary", f"kubelet tier: {FIRST} static pods Ready {first:.1f} s after their manifests; "
                                   f"{FIRST} -> {PODS}: {(PODS - FIRST) / elapsed:.2f} pods/s ({elapsed:.1f} s); "
                                   f"crispd CPU {cpu_after - cpu_before:.1f} s over it, RSS {rss_before // 1024} -> "
                                   f"{rss_after // 1024} MiB (peak {peak // 1024} MiB); load average "
                                   f"{os.getloadavg()[0]:.1f}")
    finally:
        # 30 pods take the kubelet longer to let go of than the fixture waits for one scenario's few
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                node.kubelet.remove_pod(name)
        gone = {node.kubelet.pod_name(n) for n in names}
        wait_until(lambda: not gone & {p["metadata"]["name"] for p in node.kubelet.pods()}, 300,
                   "the 30 pods gone from the kubelet's /pods")
