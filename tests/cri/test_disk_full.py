"""A full root or state filesystem (a small loop-mounted ext4 of the test's own) during a pull or a create:
RESOURCE_EXHAUSTED naming what could not be written, nothing half-made, and the same request works once there is
room again."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from tests.cri.conftest import TestImages
from tests.cri.killpoints import World, leave_nothing
from tests.cri.pods import Pods
from tests.leaks import mounts_under, wait_until

pytestmark = pytest.mark.root

FS_MB = 48


@contextlib.contextmanager
def small_fs(mount_point: Path) -> Iterator[Path]:
    """An ext4 of FS_MB MiB (no blocks reserved for root) on a loop device, mounted on mount_point."""
    image = mount_point.parent / f"{mount_point.name}.img"
    subprocess.run(["truncate", "-s", f"{FS_MB}M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    mount_point.mkdir(parents=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        for m in reversed(mounts_under(mount_point)):
            subprocess.run(["umount", "-l", m], check=False)
        image.unlink()


def fill(fs: Path, leave: int = 0) -> Path:
    """Take every free block of fs but about `leave` bytes; returns the file that holds them."""
    filler = fs / "filler"
    with open(filler, "ab") as f:
        for chunk in (1 << 20, 4096):  # big pieces, then the last blocks
            with contextlib.suppress(OSError):
                while os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize > leave + chunk:
                    os.posix_fallocate(f.fileno(), os.fstat(f.fileno()).st_size, chunk)
        if leave == 0:
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
    return filler


def _entries(directory: Path) -> list[Path]:
    return list(directory.iterdir()) if directory.exists() else []


def _expect_full(call: object, *words: str) -> None:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    details = err.value.details() or ""
    assert "no space left" in details, details
    for word in words:
        assert word in details, details


@pytest.fixture
def world(tmp_path: Path, test_images: TestImages) -> Iterator[World]:
    yield World(Pods(tmp_path), test_images, tmp_path / "logs")


def _finish(w: World, fs: Path) -> None:
    """Remove everything; nothing else may be left but the test's own filesystem."""
    w.remove_everything()
    assert wait_until(lambda: [x for x in w.pods.leaks() if x != f"mount {fs}"] + w.image_leftovers() == [], 10), \
        w.pods.leaks()


def _stop(w: World, fs: Path) -> None:
    """Room again first: a failed test's pods are removed by crispd, which needs to write."""
    (fs / "filler").unlink(missing_ok=True)
    try:
        leave_nothing(w)
    finally:
        w.pods.daemon.stop()
        w.pods.cleanup_host()


def _create_while_full(w: World, fs: Path, named: str) -> None:
    """CreateContainer with fs full: refused, nothing of the container anywhere; then, with room, it works."""
    filler = fill(fs)
    _expect_full(lambda: w.make_container(start=False), named)
    assert w.containers() == []
    daemon = w.pods.daemon
    assert _entries(daemon.state / "containers") + _entries(daemon.root / "containers") == []
    filler.unlink()
    w.make_container(start=True)
    assert w.container_state() == cri.CONTAINER_RUNNING
    _finish(w, fs)


def test_full_root_during_a_pull(world: World) -> None:
    w = world
    with small_fs(w.pods.daemon.root) as fs:
        try:
            w.pods.daemon.start()
            filler = fill(fs, leave=256 * 1024)  # room for the manifest and config, not for the layers
            _expect_full(w.pull, "sha256:", str(fs / "images"))
            assert w.image_leftovers() == []
            assert w.pods.daemon.images.ListImages(cri.ListImagesRequest()).images == []
            filler.unlink()
            w.pull()
            _finish(w, fs)
        finally:
            _stop(w, fs)


def test_full_state_during_run_and_create(world: World) -> None:
    w = world
    with small_fs(w.pods.daemon.state) as fs:
        try:
            w.pods.daemon.start()
            w.pull()
            filler = fill(fs)
            _expect_full(w.make_pod, str(fs))
            assert w.sandboxes() == [] and w.pods.leaks() == [f"mount {fs}"]
            filler.unlink()
            w.make_pod()
            _create_while_full(w, fs, str(fs / "containers"))
        finally:
            _stop(w, fs)


def test_full_root_during_create(world: World) -> None:
    w = world
    with small_fs(w.pods.daemon.root) as fs:
        try:
            w.pods.daemon.start()
            w.pull()
            w.make_pod()
            _create_while_full(w, fs, str(fs))
        finally:
            _stop(w, fs)


def test_fill_leaves_no_room(tmp_path: Path) -> None:
    """The test's own tool: after fill() not even a small file fits."""
    with small_fs(tmp_path / "fs") as fs:
        fill(fs)
        with pytest.raises(OSError) as err:
            (fs / "more").write_bytes(b"x" * 8192)
        assert err.value.errno == errno.ENOSPC
