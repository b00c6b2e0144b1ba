"""The kind files agree with crisp and with each other: the socket kubeadm is given is the one crispd serves and
crictl uses, the node image kind-config.yaml names is the one docs/kind.md builds, and the kindest/node base is of
the Kubernetes minor crisp pins. (What setup-node.sh does runs for real in the VM tier's systemd guest.)"""

from __future__ import annotations

import re
from pathlib import Path

from cri.config import Config

REPO = Path(__file__).resolve().parents[2]


def test_every_node_registers_with_crisps_socket() -> None:
    config = (REPO / "kind-config.yaml").read_text()
    socket = f"unix://{Config().listen}"
    patches = re.findall(r"kind: (InitConfiguration|JoinConfiguration)\n\s+nodeRegistration:\n\s+criSocket: (\S+)",
                         config)
    assert sorted(patches) == [("InitConfiguration", socket), ("JoinConfiguration", socket)]
    crictl = (REPO / "deploy" / "crictl.yaml").read_text()
    assert f"runtime-endpoint: {socket}" in crictl and f"image-endpoint: {socket}" in crictl


def test_the_image_kind_uses_is_the_one_the_docs_build() -> None:
    images = set(re.findall(r"image: (\S+)", (REPO / "kind-config.yaml").read_text()))
    built = set(re.findall(r"docker build -f deploy/kind/Dockerfile (?:--build-arg \S+ )?-t (\S+) \.",
                           (REPO / "docs" / "kind.md").read_text()))
    assert len(images) == 1 and images == built


def test_the_node_image_is_of_the_pinned_kubernetes_minor() -> None:
    pinned = re.search(r"^KUBERNETES_VERSION=v(\d+\.\d+)\.", (REPO / "scripts" / "tools.versions").read_text(), re.M)
    tag = re.search(r"^ARG KIND_NODE_TAG=v(\d+\.\d+)\.", (REPO / "deploy" / "kind" / "Dockerfile").read_text(), re.M)
    digest = re.search(r"^ARG KIND_NODE_DIGEST=sha256:([0-9a-f]{64})$",
                       (REPO / "deploy" / "kind" / "Dockerfile").read_text(), re.M)
    assert pinned and tag and digest
    assert tag.group(1) == pinned.group(1)
