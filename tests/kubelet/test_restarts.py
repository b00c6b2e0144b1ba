"""Restarts around a running pod: a kubelet restart finds the pod's sandbox and containers in crisp and keeps them
(same ids, no container restart), and a crispd killed with SIGKILL while the kubelet runs comes back with the same
pods: the containers ran on under their shims, the kubelet sees no restart and the pod is Ready again."""

from __future__ import annotations

import signal
from typing import Any

from cri import api as cri
from tests.kubelet.conftest import Node, StaticPod
from tests.kubelet.support import container, container_status, is_ready, pod_manifest, wait_pod, wait_until

CONTAINERS = ("app", "helper")


def _steady_pod(node: Node, static_pod: StaticPod) -> str:
    ready = {"exec": {"command": ["test", "-e", "/tmp/up"]}, "periodSeconds": 1, "failureThreshold": 10}
    return static_pod(pod_manifest("steady", [
        container("app", node.busybox, ["sh", "-c", "touch /tmp/up; exec sleep 100000"], readinessProbe=ready),
        container("helper", node.busybox, ["sleep", "100000"]),
    ]))


def _identity(node: Node, pod: dict[str, Any]) -> dict[str, Any]:
    """What must not change: the pod's uid and IP, crisp's sandbox ids for it, each container's id, restart count
    and start time."""
    uid = pod["metadata"]["uid"]
    request = cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(label_selector={"io.kubernetes.pod.uid": uid}))
    sandboxes = sorted(s.id for s in node.crisp.daemon.runtime.ListPodSandbox(request).items)
    per_container = {}
    for name in CONTAINERS:
        status = container_status(pod, name)
        per_container[name] = (status["containerID"], status["restartCount"], status["state"]["running"]["startedAt"])
    return {"uid": uid, "ip": pod["status"]["podIP"], "sandboxes": sandboxes, "containers": per_container}


def test_a_kubelet_restart_keeps_the_pod_and_its_containers(node: Node, static_pod: StaticPod) -> None:
    name = _steady_pod(node, static_pod)
    before = _identity(node, wait_pod(node.kubelet, name, is_ready, 60, "Running and Ready"))
    assert node.kubelet.stop() == 0
    node.kubelet.start()
    after = _identity(node, wait_pod(node.kubelet, name, is_ready, 60, "Ready after the kubelet's restart"))
    assert after == before
    assert len(after["sandboxes"]) == 1


def test_crispd_killed_while_the_kubelet_runs(node: Node, static_pod: StaticPod) -> None:
    name = _steady_pod(node, static_pod)
    before = _identity(node, wait_pod(node.kubelet, name, is_ready, 60, "Running and Ready"))
    assert node.crisp.daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    node.crisp.daemon.start()
    # the kubelet's runtime client reconnects (with its backoff): ExecSync reaches the container again
    wait_until(lambda: node.kubelet.run(name, "app", "cat /proc/1/cmdline") == (200, b"sleep\x00100000\x00"), 60,
               "the kubelet's ExecSync through the new crispd")
    # and it finds the same pod there: same sandbox, same containers, not restarted, Ready
    pod = wait_pod(node.kubelet, name, is_ready, 60, "Ready with crispd back")
    assert _identity(node, pod) == before
