"""OCI and Docker schema 2 manifests, indexes and image configs: parsing, platform selection, chain ids."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from typing import Any

from runtime import errors
from runtime.image.reference import check_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
# what the manifests endpoint is asked for, best first
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])

LAYER_TYPES = frozenset({
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})

# manifests and configs are read into memory: bound them (containerd uses the same 4 MiB for manifests)
# how much of each kind of small object crisp reads at most (a registry may stream for ever); an unknown media
# type gets the manifests' cap (as distribution's registry, which refuses manifests over 4 MiB)
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 8 * 1024 * 1024
MAX_TOKEN_BYTES = 1024 * 1024
_MAX_BYTES = {
    OCI_INDEX: MAX_MANIFEST_BYTES, DOCKER_LIST: MAX_MANIFEST_BYTES,
    OCI_MANIFEST: MAX_MANIFEST_BYTES, DOCKER_MANIFEST: MAX_MANIFEST_BYTES,
    OCI_CONFIG: MAX_CONFIG_BYTES, DOCKER_CONFIG: MAX_CONFIG_BYTES,
}


def max_bytes(media_type: str) -> int:
    """The size cap of a manifest, index or config of this media type."""
    return _MAX_BYTES.get(media_type, MAX_MANIFEST_BYTES)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


_MACHINE_ARCH = {
    "x86_64": ("amd64", ""), "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", ""), "i686": ("386", ""),
}


def host_platform() -> Platform:
    arch, variant = _MACHINE_ARCH.get(platform.machine(), (platform.machine(), ""))
    return Platform("linux", arch, variant)


def _variant_matches(wanted: Platform, variant: str) -> bool:
    if variant == wanted.variant or not variant:
        return True
    # arm64's only variant is v8; amd64 "v1" is the baseline
    return (wanted.architecture, variant) in {("arm64", "v8"), ("amd64", "v1")}


def _invalid(what: str, digest: str, message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"{what} {digest}: {message}")


def _load(body: bytes, what: str, digest: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(what, digest, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise _invalid(what, digest, "its JSON is nested too deep") from None
    if not isinstance(data, dict):
        raise _invalid(what, digest, "not a JSON object")
    return data


def _descriptor(item: object, what: str, digest: str) -> Descriptor:
    if not isinstance(item, dict):
        raise _invalid(what, digest, "a descriptor is not an object")
    try:
        media_type = str(item.get("mediaType", ""))
        d = check_digest(str(item["digest"]), f"digest in {what} {digest}")
        size = item["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _invalid(what, digest, f"descriptor {d} has a bad size {size!r}")
    except KeyError as exc:
        raise _invalid(what, digest, f"a descriptor has no {exc.args[0]}") from None
    plat = None
    raw_platform = item.get("platform")
    if isinstance(raw_platform, dict):
        plat = Platform(str(raw_platform.get("os", "")), str(raw_platform.get("architecture", "")),
                        str(raw_platform.get("variant", "")))
    annotations = item.get("annotations") or {}
    return Descriptor(media_type, d, size, plat, {str(k): str(v) for k, v in dict(annotations).items()})


def detect_media_type(body: bytes, content_type: str, digest: str) -> str:
    """A manifest's media type: its own `mediaType`, else the response's Content-Type, else its shape."""
    data = _load(body, "manifest", digest)
    media_type = str(data.get("mediaType") or "")
    if not media_type:
        header = content_type.split(";")[0].strip()
        if header in INDEX_TYPES or header in MANIFEST_TYPES:
            media_type = header
        elif "manifests" in data:
            media_type = OCI_INDEX
        elif "layers" in data:
            media_type = OCI_MANIFEST
    if media_type in DOCKER_SCHEMA1 or data.get("schemaVersion") == 1:
        raise _invalid("manifest", digest, "Docker schema 1 manifests are not supported (deprecated since 2017)")
    if media_type not in INDEX_TYPES and media_type not in MANIFEST_TYPES:
        raise _invalid("manifest", digest, f"unsupported media type {media_type!r}")
    return media_type


def select_platform(body: bytes, digest: str, wanted: Platform | None = None) -> Descriptor:
    """The manifest of an index for the host's platform (attestation entries `unknown/unknown` are skipped)."""
    wanted = wanted or host_platform()
    data = _load(body, "index", digest)
    manifests = data.get("manifests")
    if not isinstance(manifests, list):
        raise _invalid("index", digest, "has no manifests list")
    candidates = []
    for item in manifests:
        desc = _descriptor(item, "index", digest)
        if desc.media_type and desc.media_type not in MANIFEST_TYPES:
            continue  # nested indexes and artifacts are not images for this host
        if desc.annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            continue
        p = desc.platform
        if p is None:
            continue
        if p.os != wanted.os or p.architecture != wanted.architecture:
            continue
        if not _variant_matches(wanted, p.variant):
            continue
        candidates.append(desc)
    if not candidates:
        offered = sorted({str(_descriptor(m, "index", digest).platform) for m in manifests})
        raise errors.NotFound(f"index {digest} has no image for platform {wanted} (it offers {', '.join(offered)})")
    # an exact variant match beats an entry without a variant
    candidates.sort(key=lambda d: 0 if d.platform and d.platform.variant == wanted.variant else 1)
    return candidates[0]


@dataclass(frozen=True)
class ImageManifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]


def parse_manifest(body: bytes, digest: str) -> ImageManifest:
    data = _load(body, "manifest", digest)
    config = _descriptor(data.get("config"), "manifest", digest)
    if config.media_type and config.media_type not in CONFIG_TYPES:
        raise _invalid("manifest", digest, f"config has media type {config.media_type!r}: not a container image")
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list):
        raise _invalid("manifest", digest, "has no layers list")
    layers = tuple(_descriptor(item, "manifest", digest) for item in raw_layers)
    for layer in layers:
        if layer.media_type not in LAYER_TYPES:
            raise _invalid("manifest", digest, f"layer {layer.digest} has unsupported media type "
                           f"{layer.media_type!r}")
    return ImageManifest(config=config, layers=layers)


def parse_config(body: bytes, digest: str, layer_count: int) -> dict[str, Any]:
    """The image config JSON; its diff ids must match the manifest's layers."""
    data = _load(body, "image config", digest)
    rootfs = data.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise _invalid("image config", digest, "has no rootfs.diff_ids")
    for d in diff_ids:
        check_digest(d, f"diff id in image config {digest}")
    if len(diff_ids) != layer_count:
        raise _invalid("image config", digest,
                       f"lists {len(diff_ids)} diff ids for a manifest of {layer_count} layers")
    config = data.get("config")
    if config is not None and not isinstance(config, dict):
        raise _invalid("image config", digest, "its config is not an object")
    return data


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain ids: ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out
