"""Test tools for images: building real OCI and Docker images (tar layers, configs, manifests, indexes).

Nothing here is crisp code: the tests use it to make real images, which tests/registrytools.py pushes to and serves
from Debian's `docker-registry` on a random 127.0.0.1 port.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "plain": "application/vnd.oci.image.layer.v1.tar",
}
DOCKER_GZIP_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
BUSYBOX = "/bin/busybox"  # Debian's busybox-static


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------- layers


@dataclass
class Entry:
    """One tar entry: kind is file, dir, symlink, hardlink, char, block, fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    target: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    mtime: int = 1_700_000_000
    dev: tuple[int, int] = (0, 0)


def file(name: str, data: bytes = b"", mode: int = 0o644, **kw: Any) -> Entry:
    return Entry(name, "file", data, mode, **kw)


def directory(name: str, mode: int = 0o755, **kw: Any) -> Entry:
    return Entry(name, "dir", mode=mode, **kw)


def symlink(name: str, target: str, **kw: Any) -> Entry:
    return Entry(name, "symlink", target=target, mode=0o777, **kw)


def hardlink(name: str, target: str, **kw: Any) -> Entry:
    return Entry(name, "hardlink", target=target, **kw)


def tar_bytes(entries: list[Entry]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode, info.uid, info.gid, info.mtime = e.mode, e.uid, e.gid, e.mtime
            if e.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                    for k, v in e.xattrs.items()}
            data = None
            if e.kind == "file":
                info.size = len(e.data)
                data = io.BytesIO(e.data)
            elif e.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif e.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, e.target
            elif e.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, e.target
            elif e.kind in ("char", "block"):
                info.type = tarfile.CHRTYPE if e.kind == "char" else tarfile.BLKTYPE
                info.devmajor, info.devminor = e.dev
            elif e.kind == "fifo":
                info.type = tarfile.FIFOTYPE
            else:
                raise ValueError(e.kind)
            tar.addfile(info, data)
    return out.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


@dataclass
class Layer:
    blob: bytes
    media_type: str
    diff_id: str

    @property
    def digest(self) -> str:
        return sha256(self.blob)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.blob)}


def layer(entries: list[Entry], compression: str = "gzip", media_type: str | None = None) -> Layer:
    raw = tar_bytes(entries)
    return Layer(compress(raw, compression), media_type or LAYER_TYPES[compression], sha256(raw))


def busybox_layer(compression: str = "gzip") -> Layer:
    data = Path(BUSYBOX).read_bytes()
    return layer([
        directory("bin"), file("bin/busybox", data, 0o755), symlink("bin/sh", "busybox"),
        directory("etc"), file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/sh\n"),
        file("etc/group", b"root:x:0:\nwww-data:x:33:\n"),
        directory("tmp", 0o1777),
    ], compression)


# ---------------------------------------------------------------------------------------------------- images


@dataclass
class Image:
    config: bytes
    manifest: bytes
    layers: list[Layer]
    manifest_type: str = OCI_MANIFEST

    @property
    def id(self) -> str:
        return sha256(self.config)

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    def descriptor(self, platform: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.manifest_type, "digest": self.digest, "size": len(self.manifest)}
        if platform is not None:
            d["platform"] = platform
        d.update(extra)
        return d


def image(layers: list[Layer], user: str = "", cmd: list[str] | None = None, arch: str = "amd64",
          docker: bool = False, env: list[str] | None = None, labels: dict[str, str] | None = None,
          layer_type_override: str | None = None, variant: str = "",
          config: dict[str, Any] | None = None) -> Image:
    """`config` adds or replaces keys of the image config's `config` (Entrypoint, ExposedPorts, StopSignal...)."""
    document: dict[str, Any] = {
        "architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"User": user, "Env": env or ["PATH=/bin"], "Cmd": cmd or ["/bin/sh"], "WorkingDir": "/",
                   "Labels": labels or {}, **(config or {})},
        "rootfs": {"type": "layers", "diff_ids": [lay.diff_id for lay in layers]},
    }
    if variant:
        document["variant"] = variant
    config_bytes = json.dumps(document, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG, "digest": sha256(config_bytes),
                   "size": len(config_bytes)},
        "layers": [{**lay.descriptor(), **({"mediaType": layer_type_override} if layer_type_override else {})}
                   for lay in layers],
    }
    return Image(config_bytes, json.dumps(manifest, sort_keys=True).encode(), layers,
                 DOCKER_MANIFEST if docker else OCI_MANIFEST)


def index(entries: list[dict[str, Any]], docker: bool = False) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST if docker else OCI_INDEX,
                       "manifests": entries}, sort_keys=True).encode()


def busybox_image() -> Image:
    """busybox-static as a docker image: every applet a /bin entry, so that commands like `sleep` are found as
    programs (and really exec'd), not only run as builtins of `sh`."""
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout.split()
    links = layer([symlink(f"bin/{a}", "busybox") for a in applets if a not in ("busybox", "sh")]
                  # www-data is also a member of audio (29): SupplementalGroupsPolicy Merge adds it, Strict not
                  + [file("etc/group", b"root:x:0:\nwww-data:x:33:\naudio:x:29:www-data\n")], "gzip")
    return image([busybox_layer("gzip"), links], docker=True)
