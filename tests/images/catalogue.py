"""Which test images exist: every image critest v1.37.0 names (pkg/validate/consts.go, pkg/framework/util.go,
cri-tools' images/ Dockerfiles, the benchmark's defaults) and what the kubelet and cluster tiers pull, by upstream name.

Each is served under its upstream repository path from one loopback registry (hosts.toml maps every upstream
registry there), in the manifest format its upstream uses: Docker manifest lists for registry.k8s.io and
gcr.io/k8s-staging-cri-tools, OCI indexes for the Docker Hub / ECR busybox. Lists hold linux/amd64 and
linux/arm64/v8 (real arm64 binaries: a runtime that picked the wrong entry could not run it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from tests.images import layers
from tests.images.inputs import ARCHES, Package
from tests.imagetools import DOCKER_LIST, OCI_INDEX, Image, Layer, image, index

VARIANTS = {"amd64": "", "arm64": "v8"}
# the registries whose names resolve to the loopback registry (hosts.toml)
UPSTREAMS = ("registry.k8s.io", "k8s.gcr.io", "gcr.io", "docker.io", "public.ecr.aws")
E2E = "registry.k8s.io/e2e-test-images"
STAGING = "gcr.io/k8s-staging-cri-tools"

# the names other tiers use
BUSYBOX = f"{E2E}/busybox:1.29-2"
NGINX = f"{E2E}/nginx:1.14-2"
NGINX_NEW = f"{E2E}/nginx:1.28.0-2"  # the cluster tier's rolling update: the same server in another image
PAUSE = "registry.k8s.io/pause:3.10.2"


@dataclass(frozen=True)
class Published:
    """One repository's tags, all naming the same manifest (or list of per-platform manifests)."""

    names: tuple[str, ...]  # upstream names without the tag, e.g. registry.k8s.io/pause and k8s.gcr.io/pause
    tags: tuple[str, ...]
    images: tuple[Image, ...]  # one per platform, in ARCHES order
    oci: bool = False  # OCI index and manifests rather than Docker's
    single: bool = False  # a plain manifest (one platform) rather than a list

    @property
    def repo(self) -> str:
        """The repository path in the registry (the upstream path, the same for every upstream name)."""
        return self.names[0].split("/", 1)[1]

    def top(self) -> tuple[bytes, str]:
        """The bytes and media type the tags point at."""
        if self.single:
            return self.images[0].manifest, self.images[0].manifest_type
        entries = [img.descriptor(platform(img)) for img in self.images]
        return index(entries, docker=not self.oci), OCI_INDEX if self.oci else DOCKER_LIST


def platform(img: Image) -> dict[str, str]:
    config = json.loads(img.config)
    found = {"architecture": config["architecture"], "os": config["os"]}
    if config.get("variant"):
        found["variant"] = config["variant"]
    return found


@dataclass(frozen=True)
class Inputs:
    base: dict[str, dict[str, Package]]  # arch -> busybox, libc6
    nginx: dict[str, Package]  # amd64: nginx, nginx-common and its libraries
    helpers: dict[tuple[str, str], bytes]  # (pause|nnp, arch) -> binary
    applets: list[str]


def catalogue(inputs: Inputs) -> list[Published]:
    base = {arch: layers.busybox_base(inputs.base[arch]["busybox"], inputs.base[arch]["libc6"], inputs.applets)
            for arch in ARCHES}

    def busybox(extra: Callable[[str], list[Layer]] | None = None, oci: bool = False, user: str = "",
                config: dict[str, object] | None = None) -> tuple[Image, ...]:
        return tuple(image([base[arch], *(extra(arch) if extra else [])], arch=arch, variant=VARIANTS[arch],
                           docker=not oci, env=[layers.DEFAULT_PATH], cmd=["sh"], user=user, config=config)
                     for arch in ARCHES)

    def marked(name: str) -> tuple[Image, ...]:
        mark = layers.marker(name)
        return busybox(lambda arch: [mark])

    libraries = [p for name, p in sorted(inputs.nginx.items()) if name not in ("nginx", "nginx-common")]

    def nginx(port: int, *extra: Layer) -> Image:
        return image([base["amd64"], layers.nginx(inputs.nginx["nginx"], inputs.nginx["nginx-common"], libraries,
                                                  port), *extra],
                     arch="amd64", docker=True, env=[layers.DEFAULT_PATH, "NGINX_VERSION=1.22.1"],
                     cmd=["nginx", "-g", "daemon off;"],
                     config={"ExposedPorts": {f"{port}/tcp": {}}, "StopSignal": "SIGTERM"})

    httpd = layers.httpd()
    predefined = layers.predefined_group()
    pauses = {arch: layers.pause(inputs.helpers[("pause", arch)]) for arch in ARCHES}
    nnps = {arch: layers.nonewprivs(inputs.helpers[("nnp", arch)]) for arch in ARCHES}
    published = [
        Published((f"{E2E}/busybox",), ("1.29-2",), busybox()),
        Published((f"{E2E}/httpd",), ("2.4.39-4",), busybox(lambda arch: [httpd], config={
            "Cmd": ["httpd-foreground"], "WorkingDir": "/usr/local/apache2", "ExposedPorts": {"80/tcp": {}}})),
        Published((f"{E2E}/nonewprivs",), ("1.3",), busybox(
            lambda arch: [nnps[arch]], config={"Entrypoint": ["/usr/local/bin/nnp"], "Cmd": None})),
        Published((f"{E2E}/nginx",), ("1.14-2",), (nginx(80),)),
        Published((f"{E2E}/nginx",), ("1.28.0-2",), (nginx(80, layers.marker("nginx-1.28.0-2")),)),
        Published(("registry.k8s.io/pause", "k8s.gcr.io/pause"), ("3.9", "3.10.2"), tuple(
            image([pauses[arch]], arch=arch, variant=VARIANTS[arch], docker=True, user="65535:65535",
                  env=[layers.DEFAULT_PATH], config={"Entrypoint": ["/pause"], "Cmd": None})
            for arch in ARCHES)),
        Published((f"{STAGING}/test-image-user-uid",), ("latest",), busybox(user="1002")),
        Published((f"{STAGING}/test-image-user-username",), ("latest",), busybox(user="www-data")),
        Published((f"{STAGING}/test-image-user-uid-group",), ("latest",), busybox(user="1003:1004")),
        Published((f"{STAGING}/test-image-user-username-group",), ("latest",), busybox(user="www-data:1004")),
        Published((f"{STAGING}/test-image-predefined-group",), ("latest",),
                  busybox(lambda arch: [predefined], user="1000")),
        *(Published((f"{STAGING}/{name}",), ("latest",), marked(name))
          for name in ("test-image-1", "test-image-2", "test-image-3", "test-image-latest", "test-image-digest")),
        Published((f"{STAGING}/test-image-tags",), ("1", "2", "3"), marked("same-image")),
        Published((f"{STAGING}/test-image-tag",), ("test",), marked("test")),
        Published((f"{STAGING}/test-image-tag",), ("all",), marked("all")),
        Published((f"{STAGING}/hostnet-nginx-amd64",), ("latest",), (nginx(12003),), single=True),
        Published(("docker.io/library/busybox",), ("latest", "1.35", "1"), busybox(oci=True), oci=True),
        Published(("public.ecr.aws/docker/library/busybox",), ("1.35.0-glibc", "1-uclibc", "1", "1-glibc", "1-musl"),
                  busybox(oci=True), oci=True),
    ]
    for pub in published:
        for name in pub.names:
            if name.split("/", 1)[0] not in UPSTREAMS or name.split("/", 1)[1] != pub.repo:
                raise ValueError(f"{name}: not served at {pub.repo} through the hosts.toml of {UPSTREAMS}")
    return published
