"""The objects the cluster tier's scenarios apply, and reading what kubectl says about them."""

from __future__ import annotations

import re
from typing import Any

from tests.cluster.kubectl import Kubectl, Object
from tests.kubelet.support import container, container_id, container_status, is_ready

__all__ = ["GRACE", "container", "container_id", "container_status", "deployment", "is_ready", "pod", "pods",
           "quantity"]

GRACE = 2  # terminationGracePeriodSeconds: the tier's budget


def pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> Object:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"terminationGracePeriodSeconds": GRACE, "containers": containers, **spec}}


def deployment(name: str, replicas: int, containers: list[dict[str, Any]], **spec: Any) -> Object:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"terminationGracePeriodSeconds": GRACE, "containers": containers}},
                     **spec}}


def pods(kubectl: Kubectl, app: str, running_only: bool = False) -> list[Object]:
    """The pods labelled app=<app>; those being deleted left out when `running_only`."""
    found = kubectl.items("pods", f"--selector=app={app}")
    if running_only:
        found = [p for p in found if "deletionTimestamp" not in p["metadata"]]
    return found


_SUFFIXES = {"": 1, "m": 0.001, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(text: str | int) -> float:
    """A Kubernetes resource quantity ("1850m", "24427784Ki", "100Mi", "2") as a number of units."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", str(text))
    assert match and match.group(2) in _SUFFIXES, f"not a quantity this test reads: {text!r}"
    return float(match.group(1)) * _SUFFIXES[match.group(2)]
