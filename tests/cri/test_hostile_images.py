"""Hostile layers against a real crispd: built here (GNU tar for sparse entries, tarfile for the rest), pushed to
the loopback registry, pulled over the socket. Each is refused with INVALID_ARGUMENT naming the layer (or, for
the huge directory tree, pulled), and leaves nothing in the image store."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from runtime.fstree import remove_tree
from tests.cri.conftest import TestImages
from tests.cri.crispd import Crispd
from tests.imagetools import LAYER_TYPES, Layer, busybox_layer, file, image, layer, sha256
from tests.registrytools import Pusher

pytestmark = pytest.mark.root

MiB = 1 << 20


def _gnu_tar(entries: list[tarfile.TarInfo]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info in entries:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return out.getvalue()


def _raw_layer(raw: bytes) -> Layer:
    return Layer(gzip.compress(raw, mtime=0), LAYER_TYPES["gzip"], sha256(raw))


def sparse_layer(tmp: Path, tar_format: str) -> Layer:
    """GNU tar's sparse entry of a 2 GiB file with one byte of data: about a hundred bytes gzipped."""
    src = tmp / f"sparse-{tar_format}"
    src.mkdir()
    with open(src / "bomb", "wb") as f:
        f.truncate(2 << 30)
        f.seek(1 << 30)
        f.write(b"x")
    raw = subprocess.run(["tar", "--sparse", f"--format={tar_format}", "-cf", "-", "-C", str(src), "bomb"],
                         check=True, capture_output=True).stdout
    return _raw_layer(raw)


def _entry(name: str, **fields: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 1_700_000_000
    info.mode = 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def _directories(count: int) -> Layer:
    entries = [_entry(f"d{i}", type=tarfile.DIRTYPE, mode=0o755) for i in range(count)]
    return _raw_layer(_gnu_tar(entries))


BAD_ENTRIES: dict[str, list[tarfile.TarInfo]] = {
    "long-name": [_entry("a" * 300)],
    "long-symlink": [_entry("link", type=tarfile.SYMTYPE, linkname="t" * 5000)],
    "absurd-mtime": [_entry("late", mtime=2**80)],
    "negative-uid": [_entry("who", uid=-2)],
    "negative-gid": [_entry("who", gid=-7)],
    "huge-uid": [_entry("who", uid=2**40)],
}


class Hostile:
    def __init__(self, registry: str, tmp: Path) -> None:
        self.registry = registry
        self.push = Pusher(f"http://{registry}")
        self.base = busybox_layer()
        self.tmp = tmp

    def image(self, name: str, *layers: Layer) -> tuple[str, list[Layer]]:
        img = image([self.base, *layers], labels={"case": name, "at": str(time.time())})
        self.push.image("crisp/hostile", img, name)
        return f"{self.registry}/crisp/hostile:{name}", img.layers


@pytest.fixture(scope="module")
def hostile(test_images: TestImages, tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    return Hostile(test_images.registry, tmp_path_factory.mktemp("hostile"))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Crispd]:
    d = Crispd(tmp_path, config="[image]\nmax_layer_unpacked_bytes = 8388608\nmax_image_unpacked_bytes = 12582912\n")
    d.start()
    try:
        yield d
    finally:
        assert d.stop() == 0, d.log()
    assert d.slow_callbacks() == [], d.log()


def pull_error(daemon: Crispd, ref: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=120)
    return info.value


def assert_store_empty(daemon: Crispd) -> None:
    images = daemon.root / "images"
    deadline = time.monotonic() + 20
    while True:
        left = [str(p) for d in ("blobs/sha256", "snapshots", "tmp") for p in (images / d).iterdir()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert left == []
    assert list(daemon.images.ListImages(cri.ListImagesRequest()).images) == []


@pytest.mark.parametrize("tar_format", ["gnu", "posix"])
def test_sparse_entries_are_refused(daemon: Crispd, hostile: Hostile, tar_format: str) -> None:
    bomb = sparse_layer(hostile.tmp, tar_format)
    assert len(bomb.blob) < 1024  # a tiny layer...
    ref, _ = hostile.image(f"sparse-{tar_format}", bomb)
    err = pull_error(daemon, ref)  # ...that must not write 2 GiB
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert bomb.digest in (err.details() or "") and "sparse" in (err.details() or "")
    assert_store_empty(daemon)


def test_a_layer_over_the_unpacked_size_cap_is_refused(daemon: Crispd, hostile: Hostile) -> None:
    big = layer([file("zeros", bytes(9 * MiB))])  # 9 MiB of zeros: a few KiB gzipped
    ref, _ = hostile.image("over-layer-cap", big)
    err = pull_error(daemon, ref)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert big.digest in (err.details() or "") and "8388608" in (err.details() or "")
    assert_store_empty(daemon)


def test_an_image_over_the_unpacked_size_cap_is_refused(daemon: Crispd, hostile: Hostile) -> None:
    a, b = layer([file("a", bytes(5 * MiB))]), layer([file("b", bytes(6 * MiB))])
    ref, hostile_layers = hostile.image("over-image-cap", a, b)
    err = pull_error(daemon, ref)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "12582912" in (err.details() or "") and "image" in (err.details() or "")
    # the layer that tips it over: whichever thread gets there (the base layer is unpacked in this pull too)
    assert any(lay.digest in (err.details() or "") for lay in hostile_layers), err.details()
    assert_store_empty(daemon)


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_unrepresentable_entries_are_invalid_argument(daemon: Crispd, hostile: Hostile, case: str) -> None:
    bad = _raw_layer(_gnu_tar(BAD_ENTRIES[case]))
    ref, _ = hostile.image(f"bad-{case}", bad)
    err = pull_error(daemon, ref)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert bad.digest in (err.details() or "") and BAD_ENTRIES[case][0].name in (err.details() or "")
    assert_store_empty(daemon)


def test_a_layer_of_25000_directories_is_pulled(tmp_path: Path, hostile: Hostile) -> None:
    """One fd per directory kept open until the end ran out of fds (EMFILE, reported as INTERNAL)."""
    ref, _ = hostile.image("many-dirs", _directories(25_000))
    daemon = Crispd(tmp_path).start()
    try:
        daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=300)
        snapshot = daemon.root / "images/snapshots"
        dirs = [p for p in snapshot.iterdir() if (p / "fs/d24999").is_dir()]
        assert len(dirs) == 1 and len(os.listdir(dirs[0] / "fs")) == 25_000
        assert daemon.proc is not None
        assert len(os.listdir(f"/proc/{daemon.proc.pid}/fd")) < 200
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_a_layer_1500_directories_deep_is_pulled_measured_and_removed(tmp_path: Path, hostile: Hostile) -> None:
    """Walks and removals that recurse once per level (shutil.rmtree, os.walk) die past ~1,000 levels."""
    deep = _raw_layer(_gnu_tar([_entry("d/" * 1500 + "f", size=3)]))
    ref, _ = hostile.image("deep", deep)
    daemon = Crispd(tmp_path).start()
    try:
        daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=120)
        usage = daemon.images.ImageFsInfo(cri.ImageFsInfoRequest()).image_filesystems[0]
        assert usage.inodes_used.value > 1500
        daemon.images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=ref)))
        assert_store_empty(daemon)
    finally:
        assert daemon.stop() == 0, daemon.log()
        # never leave it to pytest's own cleanup of tmp dirs (shutil.rmtree: RecursionError for every session)
        remove_tree(daemon.root / "images", ignore_errors=True)


def _pax_tar(info: tarfile.TarInfo) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b"x" * info.size))
    return out.getvalue()


def _with_pax(name: str, headers: dict[str, str]) -> tarfile.TarInfo:
    info = _entry(name, size=1)
    info.pax_headers = headers
    return info


HUGE_HEADERS: dict[str, bytes] = {
    # read into memory whole by a tar reader: a few KiB of gzip could claim gigabytes
    "pax-2mib": _pax_tar(_with_pax("big-pax", {"comment": "x" * (2 << 20)})),
    "gnu-long-name-2mib": _gnu_tar([_entry("d/" * (1 << 20) + "f")]),
    "xattr-100kib": _pax_tar(_with_pax("big-xattr", {"SCHILY.xattr.user.big": "x" * (100 << 10)})),
}


@pytest.mark.parametrize("case", sorted(HUGE_HEADERS))
def test_huge_headers_are_invalid_argument(daemon: Crispd, hostile: Hostile, case: str) -> None:
    bad = _raw_layer(HUGE_HEADERS[case])
    ref, _ = hostile.image(f"huge-{case}", bad)
    err = pull_error(daemon, ref)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert bad.digest in (err.details() or "")
    assert_store_empty(daemon)
