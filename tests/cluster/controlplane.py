"""The cluster tier's control plane as kubeadm makes it, run as host processes inside the node (issue 15, mode 1).

`kubeadm init` phase by phase, each in the node's namespaces: `certs all` and `kubeconfig all` write the PKI and the
kubeconfigs under /etc/kubernetes; `etcd local` and `control-plane all` write the static pod manifests, whose
commands (kubeadm's flags, paths and ports) run here as processes, from the binaries the tool build made (the
manifests name them bare: kubeadm expects them on the image's PATH). kubeadm's config is one file of three
documents: InitConfiguration (the node's name and address, crispd's socket, `taints: []`), ClusterConfiguration
(the pinned version) and the kubelet's KubeletConfiguration, which `kubelet-start` turns into
/var/lib/kubelet/config.yaml.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.namespaces import Node

# etcd first: the API server needs it; the controller manager and the scheduler need the API server
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
ADMIN_KUBECONFIG = "/etc/kubernetes/admin.conf"
MANIFESTS = "/etc/kubernetes/manifests"
API_PORT = 6443


def kubeadm_config(node_name: str, address: str, cri_socket: Path, version: str, kubelet: dict[str, Any],
                   cluster_extra: dict[str, Any]) -> str:
    """`cluster_extra`: more ClusterConfiguration fields (the self-hosted cluster's image repositories)."""
    init = {
        "apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "InitConfiguration",
        "localAPIEndpoint": {"advertiseAddress": address, "bindPort": API_PORT},
        "nodeRegistration": {
            "name": node_name, "criSocket": f"unix://{cri_socket}",
            "taints": [],  # test workloads schedule on the one node
            "kubeletExtraArgs": [{"name": "node-ip", "value": address}],
        },
    }
    cluster = {
        "apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "ClusterConfiguration",
        "kubernetesVersion": version,
        "encryptionAlgorithm": "ECDSA-P256",  # keys in milliseconds rather than RSA's seconds
        **cluster_extra,
    }
    return yaml.safe_dump_all([init, cluster, kubelet], sort_keys=False)


class ControlPlane:
    """kubeadm's phases and the control plane's processes, inside `node`; logs and kubeadm's config in `base`."""

    def __init__(self, node: Node, bin_dir: Path, base: Path, config: str) -> None:
        self.node = node
        self.bin_dir = bin_dir
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.config = base / "kubeadm.yaml"
        self.config.write_text(config)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def kubeadm(self, *phase: str, timeout: float = 120) -> str:
        """`kubeadm init phase <phase...> --config <ours>`; its output (kubeadm.log in `base` keeps them all)."""
        configured = phase[0] != "wait-control-plane"  # the one phase without flags
        command = [str(self.bin_dir / "kubeadm"), "init", "phase", *phase, *[f"--config={self.config}"] * configured]
        # the kubelet and the control plane's binaries on its PATH, as a node that has them installed
        path = f"PATH={self.bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        done = self.node.run(["env", path, *command], timeout=timeout, check=False)
        with open(self.base / "kubeadm.log", "a") as log:
            log.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}")
        if done.returncode != 0:
            raise RuntimeError(f"kubeadm init phase {' '.join(phase)}: {done.returncode}\n{done.stderr[-3000:]}")
        return done.stdout + done.stderr

    def write_manifests(self) -> None:
        self.kubeadm("certs", "all")
        self.kubeadm("kubeconfig", "all")
        self.kubeadm("etcd", "local")
        self.kubeadm("control-plane", "all")

    def command(self, component: str) -> list[str]:
        """The command of kubeadm's static pod for a component, its binary from the tool build."""
        manifest = yaml.safe_load(self.node.path(f"{MANIFESTS}/{component}.yaml").read_text())
        (container,) = manifest["spec"]["containers"]
        command: list[str] = [*container["command"], *container.get("args", [])]
        return [str(self.bin_dir / command[0]), *command[1:]]

    def start(self, timeout: float = 180) -> None:
        for component in COMPONENTS:
            with open(self.log_path(component), "ab") as log:
                self.procs[component] = subprocess.Popen(
                    [*self.node.enter(), *self.command(component)], stdout=log, stderr=log, close_fds=True,
                    start_new_session=True)
        self.wait_ready(timeout)

    def log_path(self, component: str) -> Path:
        return self.base / f"{component}.log"

    def log(self, component: str) -> str:
        path = self.log_path(component)
        return path.read_text(errors="replace") if path.exists() else ""

    def check_running(self) -> None:
        for component, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{component} exited with {proc.returncode}:\n{self.log(component)[-4000:]}")

    def wait_ready(self, timeout: float) -> None:
        """Until the API server's /readyz answers ok (etcd, its informers and post-start hooks included)."""
        command = [str(self.bin_dir / "kubectl"), f"--kubeconfig={ADMIN_KUBECONFIG}", "get", "--raw=/readyz",
                   "--request-timeout=5s"]
        deadline = time.monotonic() + timeout
        while True:
            self.check_running()
            done = self.node.run(command, timeout=30, check=False)
            if done.returncode == 0 and done.stdout.strip() == "ok":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API server was not ready within {timeout}s: {done.stderr[-2000:]}\n"
                                   f"{self.log('kube-apiserver')[-4000:]}")
            time.sleep(0.5)

    def stop(self, timeout: float = 30) -> dict[str, int | None]:
        """SIGTERM each, the last started first, then SIGKILL after the timeout; their exit statuses."""
        codes: dict[str, int | None] = {}
        for component in reversed(COMPONENTS):
            proc = self.procs.get(component)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            codes[component] = proc.returncode
        return codes
