"""The cluster tier's one-node cluster, shared by every scenario of the session (issue 15, mode 1).

Inside the node's own mount and network namespaces (tests/cluster/namespaces.py): the loopback registry with the
project's test images, a crispd (own socket, root, cgroup base, bridge and subnet), etcd and the control plane as
kubeadm makes them (tests/cluster/controlplane.py), and the kubelet with the kubelet tier's hybrid-host settings,
registered as the node (tests/cluster/kubelet.py). No kube-proxy, no CoreDNS: pods reach each other by pod IP over
crisp's bridge.

At the end the workloads' namespace is deleted, the kubelet and crispd's pods go as in the kubelet tier, and nothing
may remain: no mount, cgroup, shim, veth, sandbox dir, no process in the node's namespaces, no new cgroup in the
host's v1 hierarchies, no changed host sysctl. Whatever remains after a failure is killed (every process in the
node's namespaces, every container in crispd's cgroups); the namespaces then vanish with everything made in them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster.controlplane import COMPONENTS, ControlPlane, kubeadm_config
from tests.cluster.kubectl import Kubectl
from tests.cluster.kubelet import KUBELET_DIR, NodeKubelet
from tests.cluster.namespaces import NODE_ADDRESS, Node
from tests.cri.pods import Pods
from tests.images import BUSYBOX, NGINX, serve
from tests.kubelet.hostguard import KUBELET_SYSCTLS
from tests.kubelet.kubelet import CGROUP_CONFIG, NODE_NAME
from tests.kubelet.support import wait_until
from tests.leaks import cgroup_v1_dirs, cgroups_under
from tests.tools import ROOT, bin_dir, tool, versions

NAMESPACE = "crisp-tier"  # the scenarios' workloads; deleted at the end
# what the node reserves, so that allocatable differs from capacity by known amounts
SYSTEM_RESERVED = {"cpu": "100m", "memory": "100Mi"}
KUBE_RESERVED = {"cpu": "50m", "memory": "50Mi"}
EVICTION_HARD = {"memory.available": "100Mi", "nodefs.available": "0%", "imagefs.available": "0%",
                 "nodefs.inodesFree": "0%"}
MAX_PODS = 40
# crispd shares two cores with etcd, the API server, the controller manager, the scheduler and the kubelet (and, on
# a shared machine, whatever else runs): there a step of crispd's loop is preempted for a third of a second at times
# (grpc's own poller included, at load 13), so the tier shows the steps over 200 ms as a warning rather than failing
# on a timing; the tiers with less contention (tests/cri, the kubelet tier) fail on any step over 50 ms
SLOW_CALLBACK_MS = 200


@dataclass
class Cluster:
    node: Node
    kubectl: Kubectl
    kubelet: NodeKubelet
    crisp: Pods
    control_plane: ControlPlane
    busybox: str
    nginx: str
    base: Path


def _sysctls() -> dict[str, str]:
    return {name: Path("/proc/sys", name).read_text() for name in KUBELET_SYSCTLS}


def _force_cleanup(node: Node, crisp: Pods, dirs: list[Path], killed: list[str]) -> None:
    """After a failure (a no-op after a clean run): kill crispd's containers and everything in the node's
    namespaces, then drop crispd's cgroups and the tier's dirs (the logs and configs stay)."""
    crisp.kill_containers()
    killed.extend(node.stop())
    crisp.daemon.prefix = []  # the node's namespaces are gone, with crispd's bridge and nft table
    with contextlib.suppress(AssertionError):  # a container slow to die: crisp.leaks() has reported it
        wait_until(lambda: _cleaned(crisp), 10, "crispd's cgroups removed", interval=0.1)
    for directory in [*dirs, crisp.daemon.root, crisp.daemon.state]:
        shutil.rmtree(directory, ignore_errors=True)


def _cleaned(crisp: Pods) -> bool:
    crisp.cleanup_host()
    return not cgroups_under(crisp.cgroup_base)


def _delete_workloads(kubectl: Kubectl, timeout: float = 120) -> None:
    kubectl.run("delete", "namespace", NAMESPACE, "--ignore-not-found", f"--timeout={int(timeout)}s",
                timeout=timeout + 30)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.geteuid() != 0 or shutil.which("docker-registry") is None:
        pytest.skip("needs root and docker-registry (make test installs them)")
    kubelet_binary, kubectl_binary, tools = tool("kubelet"), tool("kubectl"), bin_dir()
    for name in ("kubeadm", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        tool(name)
    base = tmp_path_factory.mktemp("cluster-tier")
    v1_before, sysctls_before = cgroup_v1_dirs(), _sysctls()
    leaks: list[str] = []
    killed: list[str] = []
    codes: dict[str, int | None] = {}
    with contextlib.ExitStack() as stack:
        (base / "crispd").mkdir()
        crisp = Pods(base / "crispd", cgroup_config=CGROUP_CONFIG)
        node = Node(base / "node", keep=[ROOT, base, tools, Path(sys.prefix), Path(sys.base_prefix)],
                    tmpfs=["/etc/kubernetes", KUBELET_DIR, "/var/lib/etcd"], cgroups=[crisp.cgroup_base])
        kubelet_dirs: list[Path] = []
        stack.callback(_force_cleanup, node, crisp, kubelet_dirs, killed)
        node.start()
        with node.network():  # the registry listens on the node's loopback, where crispd pulls from
            served = stack.enter_context(serve(base / "images"))
        crisp.daemon.config_path.write_text(crisp.config_text(
            f'[metrics]\naddress = "127.0.0.1:0"\n[debug]\nslow_callback_ms = {SLOW_CALLBACK_MS}\n'
            + served.crisp_config))
        crisp.daemon.prefix = node.enter()
        crisp.daemon.start()
        stack.callback(lambda: codes.setdefault("crispd", crisp.daemon.stop(signal.SIGTERM, timeout=60)))
        stack.callback(lambda: leaks.extend(crisp.leaks()))
        stack.callback(crisp.remove_all_pods)

        kubelet = NodeKubelet(node, kubelet_binary, base / "kubelet", crisp.daemon.socket, maxPods=MAX_PODS,
                              systemReserved=SYSTEM_RESERVED, kubeReserved=KUBE_RESERVED,
                              evictionHard=EVICTION_HARD,
                              # restarts in seconds rather than the default backoff's 10, 20, 40... (the budget)
                              crashLoopBackOff={"maxContainerRestartPeriod": "2s"})
        kubelet_dirs += kubelet.dirs
        control_plane = ControlPlane(node, tools, base / "control-plane", kubeadm_config(
            NODE_NAME, NODE_ADDRESS, crisp.daemon.socket, versions()["KUBERNETES_VERSION"], kubelet.config))
        control_plane.write_manifests()
        stack.callback(lambda: codes.update(control_plane.stop()))
        control_plane.start()
        # as kubeadm init: its first client binds admin.conf's group to cluster-admin; bootstrap-token's RBAC rules
        # let the API server's kubelet client use the kubelet's API (exec, logs, port-forward...)
        control_plane.kubeadm("upload-config", "all")
        control_plane.kubeadm("bootstrap-token")
        kubectl = Kubectl(node, kubectl_binary, NAMESPACE)

        control_plane.kubeadm("kubelet-start")
        stack.callback(lambda: codes.setdefault("kubelet", kubelet.stop()))
        kubelet.start()
        wait_until(lambda: node_ready(kubectl), 120, "the node Ready")
        control_plane.kubeadm("mark-control-plane")
        kubectl.run("create", "namespace", NAMESPACE)
        stack.callback(_delete_workloads, kubectl)
        wait_until(lambda: kubectl.run("get", "serviceaccount", "default", check=False).returncode == 0, 60,
                   "the namespace's default service account made")
        yield Cluster(node, kubectl, kubelet, crisp, control_plane, BUSYBOX, NGINX, base)
    # what is left for a post-mortem: the logs of every component, kubeadm's config and the kubelet's
    assert leaks == [], leaks
    assert killed == [], killed
    # etcd and the controller manager end on SIGTERM by re-raising it once they have shut down
    assert codes == {"kubelet": 0, "crispd": 0, **{c: codes.get(c) for c in COMPONENTS if codes.get(c) in (0, -15)}}
    assert set(codes) == {"kubelet", "crispd", *COMPONENTS}
    if crisp.daemon.slow_callbacks():  # shown, not failed: see SLOW_CALLBACK_MS
        warnings.warn(f"crispd's slow callbacks: {crisp.daemon.slow_callbacks()}", stacklevel=1)
    assert sorted(cgroup_v1_dirs() - v1_before) == []
    assert _sysctls() == sysctls_before
    assert cgroups_under(crisp.cgroup_base) == []


def node_ready(kubectl: Kubectl) -> bool:
    done = kubectl.run("get", "node", NODE_NAME, "--output=jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                       check=False)
    return done.returncode == 0 and done.stdout == b"True"


@pytest.fixture(autouse=True)
def cluster_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each scenario of the tier: crispd, the kubelet and the control plane still run (a scenario that killed
    one says so, rather than the next failing for no visible reason)."""
    yield
    if "cluster" not in request.fixturenames:
        return
    cluster: Cluster = request.getfixturevalue("cluster")
    cluster.control_plane.check_running()
    for name, proc, log in (("crispd", cluster.crisp.daemon.proc, cluster.crisp.daemon.log),
                            ("kubelet", cluster.kubelet.proc, cluster.kubelet.log)):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log()[-6000:]}")
