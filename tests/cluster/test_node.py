"""The node as the API server shows it: Ready on crisp, its capacity and allocatable, the images crisp holds."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cri import api as cri
from tests.cluster.onenode import EVICTION_HARD, KUBE_RESERVED, MAX_PODS, SYSTEM_RESERVED, Cluster
from tests.cluster.workloads import container, pod, quantity
from tests.kubelet.kubelet import NODE_NAME
from tests.kubelet.support import wait_until


def test_the_node_is_ready_on_crisp(cluster: Cluster) -> None:
    version = cluster.crisp.daemon.runtime.Version(cri.VersionRequest())
    header, row = cluster.kubectl.text("get", "node", NODE_NAME, "--output=wide").splitlines()
    # the table's columns start where their titles do (OS-IMAGE has spaces)
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    columns = {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)}
    assert columns["STATUS"] == "Ready"
    assert columns["INTERNAL-IP"] == cluster.node.address
    assert columns["CONTAINER-RUNTIME"] == f"crisp://{version.runtime_version}"
    assert columns["ROLES"] == "control-plane"
    taints = cluster.kubectl.get("node", NODE_NAME)["spec"].get("taints", [])
    assert taints == []


def _meminfo_total() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return float(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def test_capacity_and_allocatable(cluster: Cluster) -> None:
    status = cluster.kubectl.get("node", NODE_NAME)["status"]
    capacity, allocatable = status["capacity"], status["allocatable"]
    assert quantity(capacity["cpu"]) == os.cpu_count()
    assert abs(quantity(capacity["memory"]) - _meminfo_total()) <= 0.01 * _meminfo_total()
    assert quantity(capacity["pods"]) == MAX_PODS == quantity(allocatable["pods"])
    reserved_cpu = quantity(SYSTEM_RESERVED["cpu"]) + quantity(KUBE_RESERVED["cpu"])
    assert quantity(allocatable["cpu"]) == quantity(capacity["cpu"]) - reserved_cpu
    reserved_memory = sum(quantity(r["memory"]) for r in (SYSTEM_RESERVED, KUBE_RESERVED))
    assert quantity(allocatable["memory"]) == (quantity(capacity["memory"]) - reserved_memory
                                               - quantity(EVICTION_HARD["memory.available"]))
    assert allocatable["ephemeral-storage"] == capacity["ephemeral-storage"]  # nothing reserved, 0 % eviction


def _crisp_images(cluster: Cluster) -> dict[str, set[str]]:
    """crisp's images: id -> its tags and digests (the names the kubelet reports)."""
    images = cluster.crisp.daemon.images.ListImages(cri.ListImagesRequest()).images
    return {i.id: {*i.repo_tags, *i.repo_digests} for i in images}


def test_status_images_lists_what_crisp_holds(cluster: Cluster) -> None:
    cluster.kubectl.apply(pod("image-lister", [container("main", cluster.busybox, ["true"])],
                              restartPolicy="Never"))
    cluster.kubectl.run("wait", "pod/image-lister", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=120s")
    held = _crisp_images(cluster)
    assert any(cluster.busybox in names for names in held.values())

    def reported() -> list[set[str]]:
        images = cluster.kubectl.get("node", NODE_NAME)["status"].get("images", [])
        return sorted((set(i["names"]) for i in images), key=sorted)

    # the kubelet refreshes status.images with the node's status (every 10 s when something changed)
    wait_until(lambda: reported() == sorted(held.values(), key=sorted), 60, "status.images as crisp's images")
    cluster.kubectl.run("delete", "pod", "image-lister", "--wait=true")
