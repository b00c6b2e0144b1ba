"""A Deployment of nginx on crisp: it rolls out, scales up and down, rolls to another image with no more
unavailable replicas than maxUnavailable, and rolls back."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

from tests.cluster.kubectl import Object
from tests.cluster.onenode import Cluster
from tests.cluster.workloads import container, container_id, deployment, is_ready, pods
from tests.images import NGINX_NEW
from tests.kubelet.kubelet import NODE_NAME
from tests.kubelet.support import wait_until

MAX_UNAVAILABLE = 1


def _nginx(image: str) -> dict[str, Any]:
    ready = {"httpGet": {"path": "/", "port": 80}, "periodSeconds": 1}
    return container("nginx", image, None, ports=[{"containerPort": 80}], readinessProbe=ready)


def _rollout(cluster: Cluster) -> None:
    cluster.kubectl.run("rollout", "status", "deployment/web", "--timeout=180s", timeout=200)


def _serving(cluster: Cluster, replicas: int, image: str) -> list[Object]:
    """The Deployment's pods once exactly `replicas` exist: each Ready on the node, on crisp, running `image`."""
    def exactly() -> list[Object] | None:
        found = pods(cluster.kubectl, "web")
        return found if len(found) == replicas else None

    found: list[Object] = wait_until(exactly, 120, f"{replicas} pods (the others deleted)")
    for pod in found:
        assert is_ready(pod), pod["status"]
        assert pod["spec"]["nodeName"] == NODE_NAME
        assert container_id(pod, "nginx")  # crisp://<id>
        assert pod["spec"]["containers"][0]["image"] == image
    assert len({p["status"]["podIP"] for p in found}) == replicas
    return found


def _watch_deployment(cluster: Cluster) -> Callable[[], list[Object]]:
    """`kubectl get --watch` on the Deployment into a file (a pipe would fill and stall it): every version of it
    from now on, read once the returned function ends the watch."""
    path = cluster.base / "deployment-watch.json"
    with open(path, "wb") as out:
        watch = cluster.kubectl.popen("get", "deployment/web", "--watch", "--output=json", stdout=out,
                                      stderr=subprocess.DEVNULL)

    def seen() -> list[Object]:
        watch.terminate()
        watch.wait(30)
        text = path.read_text()
        decoder, found, at = json.JSONDecoder(), [], 0
        while text[at:].strip():
            at += len(text[at:]) - len(text[at:].lstrip())
            try:
                obj, at = decoder.raw_decode(text, at)
            except json.JSONDecodeError:  # the last one, cut by the end of the watch
                break
            found.append(obj)
        return found

    return seen


def test_a_deployment_rolls_out_scales_updates_and_rolls_back(cluster: Cluster,
                                                              record_property: Callable[[str, object], None]) -> None:
    kubectl = cluster.kubectl
    started = time.monotonic()
    kubectl.apply(deployment("web", 3, [_nginx(cluster.nginx)], strategy={
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": MAX_UNAVAILABLE, "maxSurge": 1}}))
    _rollout(cluster)
    record_property("summary", f"3 Ready nginx replicas {time.monotonic() - started:.1f} s after the Deployment")
    _serving(cluster, 3, cluster.nginx)

    kubectl.run("scale", "deployment/web", "--replicas=5")
    _rollout(cluster)
    _serving(cluster, 5, cluster.nginx)
    kubectl.run("scale", "deployment/web", "--replicas=1")
    _rollout(cluster)
    _serving(cluster, 1, cluster.nginx)
    kubectl.run("scale", "deployment/web", "--replicas=3")
    _rollout(cluster)
    old = {p["status"]["containerStatuses"][0]["imageID"] for p in _serving(cluster, 3, cluster.nginx)}

    seen = _watch_deployment(cluster)
    try:
        kubectl.run("set", "image", "deployment/web", f"nginx={NGINX_NEW}")
        _rollout(cluster)
    finally:
        versions = seen()
    new = {p["status"]["containerStatuses"][0]["imageID"] for p in _serving(cluster, 3, NGINX_NEW)}
    assert len(old) == len(new) == 1 and old != new
    statuses = [v["status"] for v in versions]
    # the watch saw the rollout midway and to its end
    assert any(0 < s.get("updatedReplicas", 0) < 3 for s in statuses), statuses
    assert statuses[-1].get("updatedReplicas") == 3, statuses[-1]
    # maxUnavailable bounds the available replicas from below (status.unavailableReplicas counts the surge too)
    available = [s.get("availableReplicas", 0) for s in statuses]
    assert min(available) >= 3 - MAX_UNAVAILABLE, available

    kubectl.run("rollout", "undo", "deployment/web")
    _rollout(cluster)
    back = {p["status"]["containerStatuses"][0]["imageID"] for p in _serving(cluster, 3, cluster.nginx)}
    assert back == old
    kubectl.run("delete", "deployment/web", "--cascade=foreground", "--timeout=120s", timeout=150)
    assert pods(kubectl, "web") == []
