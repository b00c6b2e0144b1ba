"""The kubelet's own API over crisp: POST /run (the kubelet's ExecSync), /exec (the kubelet proxies the SPDY upgrade
to crisp's streaming URL), and /stats/summary (container CPU, memory, writable layer and the image filesystem, from
crisp's ListContainerStats and ImageFsInfo)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cri import api as cri
from tests.cri.spdy_client import exit_code
from tests.kubelet.conftest import Node, StaticPod
from tests.kubelet.support import container, container_id, is_ready, pod_manifest, wait_pod, wait_until

SLEEPER = ["sh", "-c", "echo ready; exec sleep 100000"]
MiB = 1 << 20


@pytest.fixture(scope="module")
def sleeper(node: Node) -> Iterator[str]:
    name = node.kubelet.add_pod(pod_manifest("api", [container("app", node.busybox, SLEEPER)]))
    try:
        wait_pod(node.kubelet, name, is_ready, 60, "Running")
        yield name
    finally:
        node.kubelet.remove_pod("api")
        wait_until(lambda: node.kubelet.pod(name) is None, 30, f"pod {name} gone")


def test_run_returns_the_commands_output(node: Node, sleeper: str) -> None:
    status, body = node.kubelet.run(sleeper, "app", "echo hello from crisp")
    assert (status, body) == (200, b"hello from crisp\n")
    status, body = node.kubelet.run(sleeper, "app", "cat /etc/hostname")
    assert (status, body) == (200, f"{sleeper}\n".encode())
    # a failing command: the kubelet reports it as an error that names the exit code
    status, body = node.kubelet.run(sleeper, "app", "sh -c exit\\ 7")
    assert status == 500 and b"7" in body, body


def test_exec_through_the_kubelet(node: Node, sleeper: str) -> None:
    result = node.kubelet.exec(sleeper, "app", ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.stdout, result.stderr, exit_code(result.status)) == (b"out\n", b"err\n", 3)
    result = node.kubelet.exec(sleeper, "app", ["cat"], stdin=b"piped through the kubelet\n")
    assert (result.stdout, exit_code(result.status)) == (b"piped through the kubelet\n", 0)


def _pod_stats(summary: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in summary.get("pods", []) if p["podRef"]["name"] == name)


def _cgroup2_has(controller: str) -> bool:
    mount = Path("/sys/fs/cgroup/unified") if Path("/sys/fs/cgroup/unified/cgroup.procs").exists() else \
        Path("/sys/fs/cgroup")
    return controller in (mount / "cgroup.controllers").read_text().split()


def test_stats_summary_shows_crisps_container_and_image_stats(node: Node, static_pod: StaticPod) -> None:
    # burn some CPU, write 2 MiB into the writable layer and a line to the log, then stay still
    burn = ("i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; head -c 2097152 /dev/zero > /big; echo burnt; "
            "exec sleep 100000")
    name = static_pod(pod_manifest("stats", [container("burner", node.busybox, ["sh", "-c", burn])]))
    pod = wait_pod(node.kubelet, name, is_ready, 60, "Running")
    cid = container_id(pod, "burner")
    runtime = node.crisp.daemon.runtime

    def crisp_stats() -> Any:
        return runtime.ContainerStats(cri.ContainerStatsRequest(container_id=cid)).stats

    # the writable layer's use is measured at most every few seconds (disk_usage_cache_seconds)
    wait_until(lambda: crisp_stats().writable_layer.used_bytes.value >= 2 * MiB, 30, "2 MiB in the writable layer")

    def summary_container() -> dict[str, Any] | None:
        stats = _pod_stats(node.kubelet.summary(), name)
        return next((c for c in stats.get("containers", []) if c["name"] == "burner"), None)

    ctr = wait_until(lambda: (c := summary_container()) and c.get("rootfs", {}).get("usedBytes", 0) >= 2 * MiB and c,
                     30, "the kubelet's summary showing the writable layer")
    ours = crisp_stats()
    # the burner is asleep: its CPU time no longer moves, and the kubelet shows crisp's figure
    assert ctr["cpu"]["usageCoreNanoSeconds"] > 0
    assert ctr["cpu"]["usageCoreNanoSeconds"] == ours.cpu.usage_core_nano_seconds.value
    assert ctr["rootfs"]["usedBytes"] == ours.writable_layer.used_bytes.value
    assert ctr["logs"]["usedBytes"] > 0  # the kubelet's own measure of the log crisp wrote ("burnt")
    if _cgroup2_has("memory"):
        assert ctr["memory"]["workingSetBytes"] > 0
        assert ctr["memory"]["workingSetBytes"] == ours.memory.working_set_bytes.value

    image_fs = node.kubelet.summary()["node"]["runtime"]["imageFs"]
    info = node.crisp.daemon.images.ImageFsInfo(cri.ImageFsInfoRequest())
    assert image_fs["usedBytes"] == sum(fs.used_bytes.value for fs in info.image_filesystems)
    assert image_fs["inodesUsed"] == sum(fs.inodes_used.value for fs in info.image_filesystems)
    assert image_fs["capacityBytes"] > image_fs["usedBytes"] > 0
