"""Image references: docker's normalisation, and what is refused."""

from __future__ import annotations

import pytest

from runtime import errors
from runtime.image.reference import image_id_hex, parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("given", "expected"), [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
    ("someone/app:v2", "docker.io/someone/app:v2"),
    ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/app", "localhost:5000/app:latest"),
    ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000/a/b/c:t"),
    (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
    (f"quay.io/x/y:1@{DIGEST}", f"quay.io/x/y:1@{DIGEST}"),
    ("gcr.io/k8s-staging-cri-tools/test-image-1", "gcr.io/k8s-staging-cri-tools/test-image-1:latest"),
    ("a__b/c-d.e", "docker.io/a__b/c-d.e:latest"),
])
def test_normalisation(given: str, expected: str) -> None:
    assert str(parse_reference(given)) == expected


def test_parts() -> None:
    ref = parse_reference(f"localhost:5000/team/app:v1@{DIGEST}")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("localhost:5000", "team/app", "v1", DIGEST)
    assert ref.name == "localhost:5000/team/app"
    assert ref.object == DIGEST
    assert ref.with_digest("sha256:" + "cd" * 32) == "localhost:5000/team/app@sha256:" + "cd" * 32
    assert parse_reference("busybox").object == "latest"


@pytest.mark.parametrize("bad", [
    "", " busybox", "Busybox", "busybox:", "busybox:-x", "busy box", "busybox@sha256:abc",
    "busybox@md5:" + "a" * 32, "http://busybox", "a/", "/a", "a//b", "ex ample.com/a", "busybox:" + "x" * 129,
    "ab" * 32, "example.com:port/x",
])
def test_invalid(bad: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        parse_reference(bad)


def test_image_ids() -> None:
    assert image_id_hex("sha256:" + "a" * 64) == "a" * 64
    assert image_id_hex("a" * 64) == "a" * 64
    assert image_id_hex("sha256:" + "a" * 63) is None
    assert image_id_hex("busybox") is None
