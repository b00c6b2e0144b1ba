"""The control plane's images for the self-hosted cluster (issue 15, mode 2), made by the project from the binaries the
tool build made: each holds one static binary on PATH (kubeadm's static pod manifests run them by name), pushed at
the start of a run to a registry of the run's own, in the node's network namespace, where kubeadm's
`imageRepository` and `etcd.local.imageRepository` point."""

from __future__ import annotations

import json
from pathlib import Path

import urllib3

from tests.imagetools import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Image, directory, file, image, layer
from tests.registrytools import Pusher

REPOSITORY = "control-plane"
KUBE_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
PATH = "PATH=/usr/local/bin:/usr/bin:/bin"


def binary_image(binary: Path) -> Image:
    # zstd: the apiserver alone is 120 MB, which gzip takes many seconds to pack
    return image([layer([directory("usr"), directory("usr/local"), directory("usr/local/bin"),
                         directory("tmp", 0o1777), directory("etc"),
                         file(f"usr/local/bin/{binary.name}", binary.read_bytes(), 0o755)], "zstd")],
                 env=[PATH], cmd=[binary.name])


def push_control_plane(pusher: Pusher, bin_dir: Path, kubernetes_version: str, etcd_tag: str) -> list[str]:
    """Push kube-apiserver, kube-controller-manager, kube-scheduler (tagged with the Kubernetes version) and etcd
    (tagged `etcd_tag`) under REPOSITORY/; the references pushed, without the registry."""
    pushed = []
    for name, tag in [*((c, kubernetes_version) for c in KUBE_COMPONENTS), ("etcd", etcd_tag)]:
        pusher.image(f"{REPOSITORY}/{name}", binary_image(bin_dir / name), tag)
        pushed.append(f"{REPOSITORY}/{name}:{tag}")
    return pushed


def copy_image(source: str, repo: str, tag: str, pusher: Pusher, target_repo: str) -> None:
    """Copy `repo:tag` (its linux/amd64 manifest) from the registry at `source` (a base URL) to `target_repo:tag`:
    kubeadm wants a pause image under its imageRepository, and the tests have one (tests/images)."""
    http = urllib3.PoolManager()
    accept = ", ".join((DOCKER_LIST, OCI_INDEX, DOCKER_MANIFEST, OCI_MANIFEST))

    def get(path: str) -> urllib3.BaseHTTPResponse:
        response = http.request("GET", f"{source}/v2/{repo}/{path}", headers={"Accept": accept}, timeout=30)
        assert response.status == 200, f"GET {repo}/{path}: {response.status}"
        return response

    top = get(f"manifests/{tag}")
    manifest, media_type = top.data, top.headers["Content-Type"]
    if media_type in (DOCKER_LIST, OCI_INDEX):
        (entry,) = [m for m in json.loads(manifest)["manifests"] if m["platform"]["architecture"] == "amd64"]
        single = get(f"manifests/{entry['digest']}")
        manifest, media_type = single.data, single.headers["Content-Type"]
    document = json.loads(manifest)
    for blob in [document["config"], *document["layers"]]:
        pusher.blob(target_repo, get(f"blobs/{blob['digest']}").data)
    pusher.manifest(target_repo, tag, manifest, media_type)
