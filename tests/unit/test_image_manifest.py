"""Manifests, indexes, platform selection, chain ids, credentials."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from runtime import errors
from runtime.image.hosts import RegistryHost
from runtime.image.manifest import (
    DOCKER_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Platform,
    chain_ids,
    detect_media_type,
    parse_config,
    parse_manifest,
    select_platform,
)
from runtime.image.registry import Credentials, parse_challenge

D = "sha256:" + "0" * 64


def _d(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def _entry(n: int, os: str, arch: str, variant: str = "", **extra: object) -> dict[str, object]:
    platform = {"os": os, "architecture": arch, **({"variant": variant} if variant else {})}
    return {"mediaType": OCI_MANIFEST, "digest": _d(n), "size": 10, "platform": platform, **extra}


def test_select_platform_skips_attestations_and_other_arches() -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        _entry(1, "unknown", "unknown", annotations={"vnd.docker.reference.type": "attestation-manifest"}),
        _entry(2, "linux", "arm64", "v8"),
        _entry(3, "linux", "amd64"),
        _entry(4, "windows", "amd64"),
    ]}).encode()
    assert select_platform(body, D, Platform("linux", "amd64")).digest == _d(3)
    assert select_platform(body, D, Platform("linux", "arm64", "v8")).digest == _d(2)
    with pytest.raises(errors.NotFound) as info:
        select_platform(body, D, Platform("linux", "s390x"))
    assert "linux/arm64/v8" in str(info.value)


def test_select_platform_prefers_exact_variant() -> None:
    body = json.dumps({"manifests": [_entry(1, "linux", "arm", "v6"), _entry(2, "linux", "arm"),
                                     _entry(3, "linux", "arm", "v7")]}).encode()
    assert select_platform(body, D, Platform("linux", "arm", "v7")).digest == _d(3)


def test_media_type_detection() -> None:
    assert detect_media_type(b'{"manifests": []}', "", D) == OCI_INDEX
    assert detect_media_type(b'{"layers": [], "config": {}}', "", D) == OCI_MANIFEST
    assert detect_media_type(b"{}", DOCKER_LIST + "; charset=utf-8", D) == DOCKER_LIST
    with pytest.raises(errors.InvalidArgument, match="schema 1"):
        detect_media_type(b'{"schemaVersion": 1, "fsLayers": []}', "", D)
    with pytest.raises(errors.InvalidArgument):
        detect_media_type(b"not json", "", D)
    with pytest.raises(errors.InvalidArgument, match="unsupported media type"):
        detect_media_type(b'{"mediaType": "application/vnd.cncf.helm.config.v1+json"}', "", D)


def test_manifest_and_config_checks() -> None:
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _d(1), "size": 3}
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _d(2), "size": 5}
    parsed = parse_manifest(json.dumps({"config": config, "layers": [layer]}).encode(), D)
    assert parsed.config.digest == _d(2) and [x.digest for x in parsed.layers] == [_d(1)]
    encrypted = dict(layer, mediaType="application/vnd.oci.image.layer.v1.tar+gzip+encrypted")
    with pytest.raises(errors.InvalidArgument, match="unsupported media type"):
        parse_manifest(json.dumps({"config": config, "layers": [encrypted]}).encode(), D)
    with pytest.raises(errors.InvalidArgument):
        parse_manifest(json.dumps({"config": config, "layers": [dict(layer, size=-1)]}).encode(), D)
    with pytest.raises(errors.InvalidArgument, match="diff ids"):
        parse_config(json.dumps({"rootfs": {"diff_ids": [_d(1)]}}).encode(), D, 2)
    assert parse_config(json.dumps({"rootfs": {"diff_ids": [_d(1)]}}).encode(), D, 1)["rootfs"]


def test_chain_ids() -> None:
    a, b, c = _d(1), _d(2), _d(3)
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([]) == []


def test_credentials() -> None:
    auth = base64.b64encode(b"alice:s3cr:et").decode()
    creds = Credentials.from_auth(auth=auth, server="https://registry.example.com/")
    assert creds is not None and (creds.username, creds.password) == ("alice", "s3cr:et")
    assert "s3cr" not in repr(creds)
    assert Credentials.from_auth() is None
    with pytest.raises(errors.InvalidArgument):
        Credentials.from_auth(auth="%%%")
    upstream = RegistryHost("https://registry.example.com/v2", registry="registry.example.com")
    mirror = RegistryHost("http://127.0.0.1:1/v2", registry="registry.example.com", mirror=True)
    other = RegistryHost("https://other.example/v2", registry="other.example")
    assert creds.applies_to(upstream) and creds.applies_to(mirror) and not creds.applies_to(other)
    hub = Credentials.from_auth(username="u", password="p", server="https://index.docker.io/v1/")
    assert hub is not None and hub.applies_to(RegistryHost("https://registry-1.docker.io/v2", registry="docker.io"))


def test_parse_challenge() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example/token", "service": "registry.example",
                      "scope": "repository:a/b:pull"}
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})
