"""The cluster tier's one-node cluster (issue 15), in either of its two ways:

1. (`make test-cluster`) etcd and the control plane run as processes inside the node from kubeadm's manifests
   (tests/cluster/controlplane.py);
2. self-hosted (`make test-cluster-extended`): the kubelet runs them as static pods on crisp, from images the
   project makes from the same binaries (tests/cluster/images.py), after kubeadm's preflight checks.

Inside the node's own mount and network namespaces (tests/cluster/namespaces.py): the loopback registry with the
project's test images, a crispd (own socket, root, cgroup base, bridge and subnet), etcd and the control plane as
kubeadm makes them, and the kubelet with the kubelet tier's hybrid-host settings, registered as the node
(tests/cluster/kubelet.py). No kube-proxy, no CoreDNS: pods reach each other by pod IP over crisp's bridge.

At the end the workloads' namespace is deleted, the kubelet and crispd's pods go as in the kubelet tier, and nothing
may remain: no mount, cgroup, shim, veth, sandbox dir, no process in the node's namespaces, no new cgroup in the
host's v1 hierarchies, no changed host sysctl. Whatever remains after a failure is killed (every process in the
node's namespaces, every container in crispd's cgroups); the namespaces then vanish with everything made in them.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.controlplane import COMPONENTS, ControlPlane, kubeadm_config
from tests.cluster.images import REPOSITORY, copy_image, push_control_plane
from tests.cluster.kubectl import Kubectl
from tests.cluster.kubelet import KUBELET_DIR, NodeKubelet
from tests.cluster.namespaces import NODE_ADDRESS, Node
from tests.cri.pods import Pods
from tests.images import BUSYBOX, NGINX, PAUSE, serve
from tests.kubelet.hostguard import KUBELET_SYSCTLS
from tests.kubelet.kubelet import CGROUP_CONFIG, NODE_NAME
from tests.kubelet.support import wait_until
from tests.leaks import cgroup_v1_dirs, cgroups_under
from tests.registrytools import Pusher, Registry, hosts_toml
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
ETCD_TAG = "3.7.0-0"  # the tag kubeadm 1.37 asks for
# kubeadm's preflight checks that fail on these hosts, each with its reason (self-hosted mode); its Service-kubelet
# check only warns that no systemd unit runs the kubelet (the tier starts it)
IGNORED_PREFLIGHT = {
    "SystemVerification": "a hybrid cgroup host counts as cgroup v1: kubeadm 1.37 wants the kubelet's failCgroupV1 "
                          "false (it is) and this validation skipped explicitly",
}


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
    self_hosted: bool


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


def node_ready(kubectl: Kubectl) -> bool:
    done = kubectl.run("get", "node", NODE_NAME, "--output=jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                       check=False)
    return done.returncode == 0 and done.stdout == b"True"


@contextlib.contextmanager
def one_node_cluster(base: Path, self_hosted: bool = False) -> Iterator[Cluster]:
    kubelet_binary, kubectl_binary, tools = tool("kubelet"), tool("kubectl"), bin_dir()
    for name in ("kubeadm", *COMPONENTS):
        tool(name)
    version = versions()["KUBERNETES_VERSION"]
    v1_before, sysctls_before = cgroup_v1_dirs(), _sysctls()
    leaks: list[str] = []
    killed: list[str] = []
    codes: dict[str, int | None] = {}
    with contextlib.ExitStack() as stack:
        (base / "crispd").mkdir()
        crisp = Pods(base / "crispd", cgroup_config=CGROUP_CONFIG)
        node = Node(base / "node", NODE_NAME, keep=[ROOT, base, tools, Path(sys.prefix), Path(sys.base_prefix)],
                    tmpfs=["/etc/kubernetes", KUBELET_DIR, "/var/lib/etcd"], cgroups=[crisp.cgroup_base])
        kubelet_dirs: list[Path] = []
        stack.callback(_force_cleanup, node, crisp, kubelet_dirs, killed)
        node.start()
        cluster_config: dict[str, object] = {}
        with node.network():  # the registries listen on the node's loopback, where crispd pulls from
            served = stack.enter_context(serve(base / "images"))
            if self_hosted:
                own = Registry(base / "control-plane-registry")
                stack.callback(own.stop)
                own.start()
                pusher = Pusher(own.url)
                push_control_plane(pusher, tools, version, ETCD_TAG)
                pause_repo, pause_tag = PAUSE.split("/", 1)[1].rsplit(":", 1)
                copy_image(f"http://{served.registry}", pause_repo, pause_tag, pusher, f"{REPOSITORY}/pause")
                hosts_toml(served.certs_dir, own.host, server=own.url)
                cluster_config = {"imageRepository": f"{own.host}/{REPOSITORY}", "etcd": {"local": {
                    "imageRepository": f"{own.host}/{REPOSITORY}", "imageTag": ETCD_TAG}},
                    "proxy": {"disabled": True}, "dns": {"disabled": True}}  # no kube-proxy, no CoreDNS
        crisp.rewrite_config(f"[debug]\nslow_callback_ms = {SLOW_CALLBACK_MS}\n{served.crisp_config}")
        crisp.daemon.prefix = node.enter()
        crisp.daemon.start()
        stack.callback(lambda: codes.setdefault("crispd", crisp.daemon.stop(signal.SIGTERM, timeout=60)))
        stack.callback(lambda: leaks.extend(crisp.leaks()))
        stack.callback(crisp.remove_all_pods)

        kubelet = NodeKubelet(node, kubelet_binary, base / "kubelet", crisp.daemon.socket, self_hosted=self_hosted,
                              maxPods=MAX_PODS, systemReserved=SYSTEM_RESERVED, kubeReserved=KUBE_RESERVED,
                              evictionHard=EVICTION_HARD,
                              # restarts in seconds rather than the default backoff's 10, 20, 40... (the budget)
                              crashLoopBackOff={"maxContainerRestartPeriod": "2s"})
        kubelet_dirs += kubelet.dirs
        control_plane = ControlPlane(node, tools, base / "control-plane", kubeadm_config(
            NODE_NAME, NODE_ADDRESS, crisp.daemon.socket, version, kubelet.config, cluster_config))
        if self_hosted:
            # kubeadm's own checks, with its own CRI client: it pulls the control plane's images through crisp
            ignored = [f"--ignore-preflight-errors={','.join(IGNORED_PREFLIGHT)}"] if IGNORED_PREFLIGHT else []
            control_plane.kubeadm("preflight", *ignored, timeout=600)
        control_plane.write_manifests()
        stack.callback(lambda: codes.update(control_plane.stop()))
        if not self_hosted:
            control_plane.start()
        control_plane.kubeadm("kubelet-start")
        stack.callback(lambda: codes.setdefault("kubelet", kubelet.stop()))
        kubelet.start()
        if self_hosted:  # the kubelet runs etcd and the control plane from kubeadm's manifests
            control_plane.kubeadm("wait-control-plane", timeout=600)
            control_plane.wait_ready(300)
        # as kubeadm init: its first client binds admin.conf's group to cluster-admin; bootstrap-token's RBAC rules
        # let the API server's kubelet client use the kubelet's API (exec, logs, port-forward...)
        control_plane.kubeadm("upload-config", "all")
        control_plane.kubeadm("bootstrap-token")
        kubectl = Kubectl(node, kubectl_binary, NAMESPACE)
        wait_until(lambda: node_ready(kubectl), 120, "the node Ready")
        control_plane.kubeadm("mark-control-plane")
        kubectl.run("create", "namespace", NAMESPACE)
        stack.callback(_delete_workloads, kubectl)
        wait_until(lambda: kubectl.run("get", "serviceaccount", "default", check=False).returncode == 0, 60,
                   "the namespace's default service account made")
        yield Cluster(node, kubectl, kubelet, crisp, control_plane, BUSYBOX, NGINX, base, self_hosted)
    # what is left for a post-mortem: the logs of every component, kubeadm's config and the kubelet's
    assert leaks == [], leaks
    assert killed == [], killed
    # etcd and the controller manager end on SIGTERM by re-raising it once they have shut down
    processes = () if self_hosted else COMPONENTS
    assert codes == {"kubelet": 0, "crispd": 0, **{c: codes.get(c) for c in processes if codes.get(c) in (0, -15)}}
    assert set(codes) == {"kubelet", "crispd", *processes}
    if crisp.daemon.slow_callbacks():  # shown, not failed: see SLOW_CALLBACK_MS
        warnings.warn(f"crispd's slow callbacks: {crisp.daemon.slow_callbacks()}", stacklevel=1)
    assert sorted(cgroup_v1_dirs() - v1_before) == []
    assert _sysctls() == sysctls_before
    assert cgroups_under(crisp.cgroup_base) == []
