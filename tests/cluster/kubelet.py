"""The cluster tier's kubelet: the kubelet tier's Kubelet (its hybrid-host settings and per-run dirs) registered as
a node of the cluster.

Its KubeletConfiguration is the kubelet tier's without what a standalone kubelet sets for want of an API server
(anonymous access, AlwaysAllow, loopback addresses, its own ports): it goes into kubeadm's config as a document, and
`kubeadm init phase kubelet-start` merges it with kubeadm's defaults (webhook authentication and authorization, the
cluster CA, the fixed ports) into /var/lib/kubelet/config.yaml, next to the flags it wants (kubeadm-flags.env). The
kubelet then runs inside the node with those and kubeadm's kubeconfig for the node, /etc/kubernetes/kubelet.conf
(nothing starts it for kubeadm: this host has no systemd as PID 1).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import urllib3

from tests.cluster.namespaces import Node
from tests.kubelet.kubelet import Kubelet

KUBELET_DIR = "/var/lib/kubelet"  # where kubeadm writes the kubelet's config and flags
STANDALONE_ONLY = ("address", "port", "readOnlyPort", "healthzBindAddress", "healthzPort", "authentication",
                   "authorization")
HEALTHZ_PORT = 10248  # kubeadm's default, which it checks


class NodeKubelet(Kubelet):
    def __init__(self, node: Node, binary: Path, base: Path, runtime_socket: Path, self_hosted: bool = False,
                 **config: Any) -> None:
        """`self_hosted`: the kubelet runs the control plane from kubeadm's static pod manifests."""
        self.node = node
        self.self_hosted = self_hosted
        super().__init__(binary, base, runtime_socket, **config)
        self.healthz_port, self.port = HEALTHZ_PORT, 10250

    def configuration(self) -> dict[str, Any]:
        config = super().configuration()
        for key in STANDALONE_ONLY:
            del config[key]
        if self.self_hosted:
            del config["staticPodPath"]  # kubeadm's, /etc/kubernetes/manifests
        return config

    def kubeadm_flags(self) -> list[str]:
        """The flags kubeadm wrote for the kubelet (KUBELET_KUBEADM_ARGS="...")."""
        text = self.node.path(f"{KUBELET_DIR}/kubeadm-flags.env").read_text()
        for line in text.splitlines():
            name, _, value = line.partition("=")
            if name == "KUBELET_KUBEADM_ARGS":
                return shlex.split(shlex.split(value)[0])
        return []

    def command(self) -> list[str]:
        return [*self.node.enter(), str(self.binary), f"--config={KUBELET_DIR}/config.yaml",
                "--kubeconfig=/etc/kubernetes/kubelet.conf", f"--root-dir={self.root}", f"--cert-dir={self.certs}",
                *self.kubeadm_flags(), "--v=2"]

    def healthy(self) -> bool:
        """Its healthz port answers (the port kubeadm waits on); the node's readiness is the API server's word."""
        try:
            with self.node.network():
                response = self.http.request("GET", f"http://127.0.0.1:{self.healthz_port}/healthz", retries=False,
                                             timeout=5)
            return response.status == 200
        except (urllib3.exceptions.HTTPError, OSError):
            return False
