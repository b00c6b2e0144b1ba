"""The images critest and the kubelet tier pull, built by the project and served from a loopback docker-registry.

    from tests.images import serve, BUSYBOX, NGINX, PAUSE

    with serve(tmp_path) as served:          # builds (or reuses) the image set, starts a registry on a free port
        Crispd(base, config=served.crisp_config)   # crisp pulls registry.k8s.io/... etc. from that registry
        ...                                  # served.registry is its host:port, served.certs_dir its hosts.toml dir

`build()` makes the set once per content (the .debs, the Go helpers, this package's recipe) into the images cache
(`CRISP_IMAGES_CACHE`, default /var/cache/crisp-images): a docker-registry storage directory that `serve()` serves
read-only, so that a warm start takes a moment and concurrent runs share it. `make images` (part of `make test`)
builds it ahead; `python -m tests.images build|serve` does it by hand. What is in it: catalogue.py and layers.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.images.catalogue import BUSYBOX, NGINX, NGINX_NEW, PAUSE, UPSTREAMS, Inputs, catalogue, platform
from tests.images.inputs import (
    ARCHES,
    BASE_PACKAGES,
    NGINX_PACKAGES,
    cache_dir,
    fetch,
    helpers,
    library_dependencies,
    sha256_file,
)
from tests.imagetools import sha256
from tests.registrytools import Pusher, Registry, hosts_toml

__all__ = ["BUSYBOX", "NGINX", "NGINX_NEW", "PAUSE", "ImageSet", "Served", "build", "serve"]

RECIPE = [*sorted(Path(__file__).parent.glob("*.py")), Path(__file__).parent.parent / "imagetools.py"]


@dataclass(frozen=True)
class ImageSet:
    """A built set: `storage` is a docker-registry storage dir; `refs` maps every upstream reference (name:tag) to
    the digest it resolves to."""

    dir: Path
    refs: dict[str, str]

    @property
    def storage(self) -> Path:
        return self.dir / "storage"

    @classmethod
    def load(cls, path: Path) -> ImageSet:
        index = json.loads((path / "images.json").read_text())
        return cls(path, {ref: entry["digest"] for ref, entry in index.items()})


def build(verbose: bool = True) -> ImageSet:
    """The image set for the current inputs, built when the cache lacks it (fetching .debs and building the Go
    helpers as needed: network and root the first time)."""
    from tests.vm.settings import cache_lock, prune

    cache = cache_dir()
    with cache_lock(cache):
        base = {arch: fetch(BASE_PACKAGES, arch) for arch in ARCHES}
        nginx = fetch(NGINX_PACKAGES, ARCHES[0])
        nginx.update(fetch(library_dependencies(nginx["nginx"]), ARCHES[0]))
        binaries = helpers()
        key = hashlib.sha256()
        for recipe in RECIPE:
            key.update(recipe.name.encode() + b"\0" + recipe.read_bytes())
        for package in [*(p for arch in ARCHES for p in base[arch].values()), *nginx.values()]:
            key.update(f"{package.name}:{package.arch}:{sha256_file(package.deb)}".encode())
        for (name, arch), path in sorted(binaries.items()):
            key.update(f"{name}:{arch}:{sha256_file(path)}".encode())
        target = cache / "sets" / key.hexdigest()[:16]
        if not (target / "images.json").is_file():
            versions = {p.deb.name.split("_")[1] for p in (base[a]["busybox"] for a in ARCHES)}
            if len(versions) != 1:
                raise RuntimeError(f"busybox .debs of different versions {sorted(versions)}: the applet list is read "
                                   f"from the {ARCHES[0]} one; remove {cache / 'debs'} to fetch them again")
            applets = subprocess.run([str(base[ARCHES[0]]["busybox"].tree / "bin/busybox"), "--list"], check=True,
                                     capture_output=True, text=True).stdout.split()
            inputs = Inputs(base=base, nginx=nginx, applets=applets,
                            helpers={k: p.read_bytes() for k, p in binaries.items()})
            _build_into(target, inputs, verbose)
        (target / "last-used").touch()
        prune(cache / "sets", keep=target, keep_others=2, days=7)
    return ImageSet.load(target)


def _build_into(target: Path, inputs: Inputs, verbose: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        refs: dict[str, dict[str, object]] = {}
        registry = Registry(work / "registry", storage=work / "set" / "storage").start()
        try:
            pusher = Pusher(registry.url)
            for pub in catalogue(inputs):
                for img in pub.images:
                    pusher.image(pub.repo, img)
                body, media_type = pub.top()
                for tag in pub.tags:
                    pusher.manifest(pub.repo, tag, body, media_type)
                for name in pub.names:
                    for tag in pub.tags:
                        refs[f"{name}:{tag}"] = {
                            "digest": sha256(body), "media_type": media_type,
                            "platforms": {"/".join(platform(img).values()): img.id for img in pub.images}}
                if verbose:
                    print(f"images: {pub.names[0]}:{','.join(pub.tags)} {sha256(body)}", flush=True)
        finally:
            registry.stop()
        (work / "set" / "images.json").write_text(json.dumps(refs, indent=1, sort_keys=True) + "\n")
        (work / "set").rename(target)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


@dataclass(frozen=True)
class Served:
    registry: str  # host:port of the loopback registry
    certs_dir: Path  # <upstream registry>/hosts.toml for every registry of UPSTREAMS
    images: ImageSet

    @property
    def crisp_config(self) -> str:
        """The crispd config section that makes crisp pull the upstream names from the loopback registry."""
        return f'[image]\nregistry_config_path = "{self.certs_dir}"\n'


@contextlib.contextmanager
def serve(workdir: Path, images: ImageSet | None = None) -> Iterator[Served]:
    """A read-only docker-registry on a free 127.0.0.1 port serving `images` (default: `build()`), and a hosts.toml
    per upstream registry in `workdir/certs.d` whose server is that registry: nothing reaches the real registries."""
    images = images or build()
    registry = Registry(workdir / "registry", storage=images.storage, readonly=True).start()
    try:
        certs = workdir / "certs.d"
        for upstream in UPSTREAMS:
            hosts_toml(certs, upstream, server=registry.url)
        yield Served(registry.host, certs, images)
    finally:
        registry.stop()
