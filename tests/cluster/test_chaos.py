"""The self-hosted cluster (issue 15's second way, `make test-cluster-extended`): crisp runs its own control plane as
the kubelet's static pods, and a crispd killed with SIGKILL during a rollout costs nothing: the API server keeps
answering /readyz, no container restarts, the rollout completes once crispd is back."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.conftest import check_alive, needs_root_and_registry
from tests.cluster.controlplane import COMPONENTS
from tests.cluster.onenode import Cluster, one_node_cluster
from tests.cluster.workloads import container, container_id, container_status, deployment, is_ready, pods
from tests.images import NGINX_NEW
from tests.kubelet.kubelet import NODE_NAME
from tests.kubelet.support import wait_until

pytestmark = pytest.mark.extended


@pytest.fixture(scope="module")
def selfhosted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    needs_root_and_registry()
    with one_node_cluster(tmp_path_factory.mktemp("cluster-selfhosted"), self_hosted=True) as one:
        yield one
        check_alive(one)


def _mirrors(cluster: Cluster) -> dict[str, Any]:
    """The control plane's mirror pods (the kubelet makes them once the node is registered), by component."""
    found = {p["metadata"]["name"]: p for p in cluster.kubectl.items("pods", "--namespace=kube-system")}
    return {c: found[f"{c}-{NODE_NAME}"] for c in COMPONENTS if f"{c}-{NODE_NAME}" in found}


def _control_plane(cluster: Cluster) -> dict[str, tuple[str, int]]:
    """The control plane, once all Ready: component -> (crisp's container id, restart count)."""
    def ready() -> dict[str, Any] | None:
        mirrors = _mirrors(cluster)
        return mirrors if len(mirrors) == len(COMPONENTS) and all(map(is_ready, mirrors.values())) else None

    mirrors = wait_until(ready, 120, "the control plane's mirror pods Ready")
    return {c: (container_id(m, c), container_status(m, c)["restartCount"]) for c, m in mirrors.items()}


def test_crisp_runs_its_own_control_plane(selfhosted: Cluster) -> None:
    assert set(_control_plane(selfhosted)) == set(COMPONENTS)  # each Ready, in crisp (crisp://<id>)
    for mirror in _mirrors(selfhosted).values():  # from the project's image, on the node's network
        assert mirror["spec"]["hostNetwork"] is True
        assert "/control-plane/" in mirror["spec"]["containers"][0]["image"]
    assert selfhosted.kubectl.text("get", "--raw=/readyz") == "ok"


def _running(cluster: Cluster) -> dict[str, tuple[str, int]]:
    """Every running container of the workloads' pods: pod/container -> (id, restart count)."""
    found = {}
    for pod in pods(cluster.kubectl, "rolling", running_only=True):
        for status in pod["status"].get("containerStatuses", []):
            if "running" in status["state"]:
                found[f"{pod['metadata']['name']}/{status['name']}"] = (status["containerID"], status["restartCount"])
    return found


def test_crispd_killed_during_a_rollout(selfhosted: Cluster) -> None:
    kubectl, crisp = selfhosted.kubectl, selfhosted.crisp
    ready = {"httpGet": {"path": "/", "port": 80}, "periodSeconds": 1}
    kubectl.apply(deployment("rolling", 3, [container("nginx", selfhosted.nginx, None, readinessProbe=ready)],
                             strategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1,
                                                                                  "maxSurge": 1}}))
    kubectl.run("rollout", "status", "deployment/rolling", "--timeout=180s", timeout=200)
    control_plane = _control_plane(selfhosted)

    kubectl.run("set", "image", "deployment/rolling", f"nginx={NGINX_NEW}")

    def midway() -> bool:
        status: dict[str, Any] = kubectl.get("deployment", "rolling")["status"]
        return bool(0 < status.get("updatedReplicas", 0) < 3)

    wait_until(midway, 60, "the rollout under way", interval=0.2)
    before = _running(selfhosted)
    assert crisp.daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    answers = []
    down = time.monotonic()
    while time.monotonic() - down < 5:  # crispd is gone: the control plane runs on under its shims
        answers.append(kubectl.run("get", "--raw=/readyz", check=False).stdout)
        time.sleep(0.5)
    crisp.daemon.start()
    for _ in range(5):
        answers.append(kubectl.run("get", "--raw=/readyz", check=False).stdout)
        time.sleep(0.5)
    assert answers == [b"ok"] * len(answers)

    kubectl.run("rollout", "status", "deployment/rolling", "--timeout=300s", timeout=330)
    assert _control_plane(selfhosted) == control_plane
    after = _running(selfhosted)
    assert {k: v for k, v in after.items() if k in before} == {k: v for k, v in before.items() if k in after}
    assert {p["spec"]["containers"][0]["image"] for p in pods(kubectl, "rolling", running_only=True)} == {NGINX_NEW}
    kubectl.run("delete", "deployment/rolling", "--cascade=foreground", "--timeout=120s", timeout=150)
