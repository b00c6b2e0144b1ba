"""Reading the kubelet's v1.Pod status, waiting for it, and the static pod specs the scenarios share."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from tests.kubelet.kubelet import Kubelet

Pod = dict[str, Any]


def container_status(pod: Pod, name: str, init: bool = False) -> dict[str, Any]:
    key = "initContainerStatuses" if init else "containerStatuses"
    for status in pod.get("status", {}).get(key, []):
        if status["name"] == name:
            return dict(status)
    return {}


def condition(pod: Pod, kind: str) -> bool:
    return any(c["type"] == kind and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def is_ready(pod: Pod) -> bool:
    return pod.get("status", {}).get("phase") == "Running" and condition(pod, "Ready")


def container_id(pod: Pod, name: str, init: bool = False) -> str:
    """The CRI container id the kubelet reports (`crisp://<id>`), without its scheme."""
    found = str(container_status(pod, name, init).get("containerID", ""))
    scheme, _, cid = found.partition("://")
    assert scheme == "crisp", found
    return cid


def wait_pod(kubelet: Kubelet, name: str, predicate: Callable[[Pod], bool], timeout: float,
             what: str = "", interval: float = 0.5) -> Pod:
    """Poll the kubelet's /pods until `name` satisfies the predicate; the failure shows the kubelet's last view."""
    deadline = time.monotonic() + timeout
    pod: Pod | None = None
    while True:
        pod = kubelet.pod(name)
        if pod is not None and predicate(pod):
            return pod
        if time.monotonic() > deadline:
            status = json.dumps(pod.get("status") if pod else None, indent=1)
            raise AssertionError(f"pod {name}: not {what or 'as expected'} within {timeout}s; the kubelet says:\n"
                                 f"{status}\nkubelet log tail:\n{kubelet.log()[-3000:]}")
        time.sleep(interval)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout}s (last: {value!r})")
        time.sleep(interval)


def container(name: str, image: str, command: list[str] | None, **extra: Any) -> dict[str, Any]:
    """A container spec; command None runs the image's own."""
    spec = {"name": name, "image": image, "imagePullPolicy": "IfNotPresent", **extra}
    if command is not None:
        spec["command"] = command
    return spec


def pod_manifest(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    """A static pod: a short termination grace period (the tier's budget), everything else as the caller says."""
    return {"metadata": {"name": name, "labels": {"tier": "kubelet"}},
            "spec": {"terminationGracePeriodSeconds": 2, "containers": containers, **spec}}

