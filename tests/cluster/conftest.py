"""The cluster tier's fixtures: the one-node cluster (tests/cluster/onenode.py, issue 15's first way: the control
plane as processes), shared by every scenario of the session; each scenario leaves crispd, the kubelet and the
control plane running."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.cluster.onenode import Cluster, one_node_cluster


def needs_root_and_registry() -> None:
    if os.geteuid() != 0 or shutil.which("docker-registry") is None:
        pytest.skip("needs root and docker-registry (make test installs them)")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    needs_root_and_registry()
    with one_node_cluster(tmp_path_factory.mktemp("cluster-tier")) as one:
        yield one


def check_alive(cluster: Cluster) -> None:
    """crispd, the kubelet and the control plane still run (a scenario that killed one says so, rather than the next
    failing for no visible reason)."""
    cluster.control_plane.check_running()
    for name, proc, log in (("crispd", cluster.crisp.daemon.proc, cluster.crisp.daemon.log),
                            ("kubelet", cluster.kubelet.proc, cluster.kubelet.log)):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log()[-6000:]}")


@pytest.fixture(autouse=True)
def cluster_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "cluster" in request.fixturenames:
        check_alive(request.getfixturevalue("cluster"))
