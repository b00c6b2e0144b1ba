"""A static pod's end: removing its manifest makes the kubelet stop it (StopPodSandbox releases the pod's network
namespace and its IP lease), and the kubelet's garbage collection (every minute) removes its containers and sandbox
through crisp, after which nothing of the pod is left: no mount, cgroup, shim or container process, directory, row,
nor the kubelet's own pod and log directories."""

from __future__ import annotations

from typing import Any

from cri import api as cri
from tests.kubelet.conftest import Node
from tests.kubelet.support import container, container_id, is_ready, pod_manifest, wait_pod, wait_until
from tests.leaks import cgroups_under, mounts_under, processes_mentioning, store_rows

GC_WITHIN = 120  # the kubelet's container GC runs every minute


def _sandboxes(node: Node, uid: str) -> list[Any]:
    request = cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(label_selector={"io.kubernetes.pod.uid": uid}))
    return list(node.crisp.daemon.runtime.ListPodSandbox(request).items)


def _mounts_of(node: Node, ids: list[str]) -> list[str]:
    return [m for m in mounts_under(node.crisp.daemon.base) if any(i in m for i in ids)]


def test_removing_the_manifest_stops_the_pod_and_gc_leaves_nothing(node: Node) -> None:
    name = node.kubelet.add_pod(pod_manifest("doomed", [
        container("first", node.busybox, ["sleep", "100000"]),
        container("second", node.busybox, ["sh", "-c", "echo bye; exec sleep 100000"]),
    ]))
    try:
        pod = wait_pod(node.kubelet, name, is_ready, 60, "Running and Ready")
    finally:
        node.kubelet.remove_pod("doomed")
    uid, ip = pod["metadata"]["uid"], pod["status"]["podIP"]
    (sandbox,) = _sandboxes(node, uid)
    containers = [container_id(pod, c) for c in ("first", "second")]
    ids = [sandbox.id, *containers]
    net_pin = node.crisp.daemon.state / "sandboxes" / sandbox.id / "ns" / "net"
    assert str(net_pin) in _mounts_of(node, ids)
    assert f"ip_leases {sandbox.id}" in store_rows(node.crisp.daemon.root / "crisp.db", ids)

    # stopped: the kubelet lets go of the pod, crisp's sandbox is NOTREADY with its network gone
    wait_until(lambda: node.kubelet.pod(name) is None, 30, "the pod gone from the kubelet's /pods")
    wait_until(lambda: all(s.state == cri.SANDBOX_NOTREADY for s in _sandboxes(node, uid)), 30,
               "the sandbox stopped")
    assert str(net_pin) not in _mounts_of(node, ids)
    assert f"ip_leases {sandbox.id}" not in store_rows(node.crisp.daemon.root / "crisp.db", ids)
    status = node.crisp.daemon.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox.id))
    assert status.status.network.ip != ip

    # collected: the kubelet removes the containers and the sandbox through crisp, and nothing is left
    wait_until(lambda: _sandboxes(node, uid) == [], GC_WITHIN, "the sandbox removed by the kubelet's GC")
    listed = node.crisp.daemon.runtime.ListContainers(cri.ListContainersRequest()).containers
    assert [c.id for c in listed if c.id in containers] == []
    assert _mounts_of(node, ids) == []
    assert [c for c in cgroups_under(node.crisp.cgroup_base) if uid in c or any(i in c for i in ids)] == []
    assert [p for i in ids for p in processes_mentioning(i)] == []
    assert store_rows(node.crisp.daemon.root / "crisp.db", ids) == []
    assert not (node.crisp.daemon.state / "sandboxes" / sandbox.id).exists()
    for cid in containers:
        assert not (node.crisp.daemon.state / "containers" / cid).exists()
        assert not (node.crisp.daemon.root / "containers" / cid).exists()
    # and the kubelet removed its own directories of the pod
    wait_until(lambda: not (node.kubelet.root / "pods" / uid).exists(), 30, "the kubelet's pod dir removed")
    # the pod's log dir goes in the kubelet's container GC, which runs once a minute
    wait_until(lambda: [d.name for d in node.kubelet.pod_logs.iterdir() if uid in d.name] == [], 90,
               "the kubelet's pod log dir removed")
