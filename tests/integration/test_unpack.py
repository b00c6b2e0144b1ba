"""Layer unpacking on the real kernel: ownership, modes, xattrs, whiteouts under a real overlayfs, and tars that
try to escape their snapshot."""

from __future__ import annotations

import os
import random
import stat
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import errors
from runtime.image.gc import collect
from runtime.image.store import ImageStore
from runtime.image.unpack import UnsafeLayer, unpack_layer
from tests.imagetools import Entry, Layer, directory, file, hardlink, layer, symlink, tar_bytes

pytestmark = pytest.mark.root

MiB = 1 << 20
# VFS_CAP_REVISION_2 | effective, permitted = CAP_NET_BIND_SERVICE
CAP_NET_BIND = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (chown, mknod, trusted.* xattrs)")


def _unpack(tmp_path: Path, lay: Layer, name: str = "fs") -> Path:
    blob = tmp_path / f"{name}.blob"
    blob.write_bytes(lay.blob)
    dest = tmp_path / name
    dest.mkdir()
    result = unpack_layer(blob, dest, lay.digest, lay.diff_id)
    assert result.diff_id == lay.diff_id
    return dest


FEATURES = [
    directory("etc"), file("etc/hostname", b"crisp\n"),
    file("usr/bin/tool", b"#!/bin/sh\n", 0o4755, uid=0, gid=0),  # parent dirs implied
    file("usr/bin/sgid", b"x", 0o2711, gid=42),
    file("ping", b"ELF", 0o755, xattrs={"security.capability": CAP_NET_BIND, "user.crisp": b"hello"}),
    file("owned", b"data", 0o600, uid=1234, gid=5678, mtime=1_000_000_000),
    symlink("abs-link", "/etc/hostname"), symlink("rel-link", "etc/hostname", uid=7, gid=8),
    symlink("dangling", "../../../../nowhere"),
    hardlink("etc/hostname-again", "etc/hostname"),
    Entry("dev/null", "char", mode=0o666, dev=(1, 3)), Entry("dev/loop9", "block", mode=0o660, dev=(7, 9)),
    Entry("run/fifo", "fifo", mode=0o620),
    directory("sticky", 0o1777, uid=3, gid=4, mtime=1_111_111_111), file("sticky/inside", b""),
]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "plain"])
def test_unpack_everything_a_layer_carries(tmp_path: Path, compression: str) -> None:
    fs = _unpack(tmp_path, layer(FEATURES, compression))
    assert (fs / "etc/hostname").read_bytes() == b"crisp\n"
    tool = (fs / "usr/bin/tool").lstat()
    assert stat.S_IMODE(tool.st_mode) == 0o4755
    sgid = (fs / "usr/bin/sgid").lstat()
    assert stat.S_IMODE(sgid.st_mode) == 0o2711 and sgid.st_gid == 42
    assert stat.S_IMODE((fs / "usr").lstat().st_mode) == 0o755
    assert os.getxattr(fs / "ping", "security.capability") == CAP_NET_BIND
    assert os.getxattr(fs / "ping", "user.crisp") == b"hello"
    owned = (fs / "owned").lstat()
    assert (owned.st_uid, owned.st_gid, stat.S_IMODE(owned.st_mode)) == (1234, 5678, 0o600)
    assert owned.st_mtime == 1_000_000_000
    assert os.readlink(fs / "abs-link") == "/etc/hostname"
    rel = (fs / "rel-link").lstat()
    assert os.readlink(fs / "rel-link") == "etc/hostname" and (rel.st_uid, rel.st_gid) == (7, 8)
    assert os.readlink(fs / "dangling") == "../../../../nowhere"
    assert (fs / "etc/hostname-again").lstat().st_ino == (fs / "etc/hostname").lstat().st_ino
    null = (fs / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    loop = (fs / "dev/loop9").lstat()
    assert stat.S_ISBLK(loop.st_mode) and stat.S_IMODE(loop.st_mode) == 0o660
    fifo = (fs / "run/fifo").lstat()
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o620
    sticky = (fs / "sticky").lstat()
    assert stat.S_IMODE(sticky.st_mode) == 0o1777 and (sticky.st_uid, sticky.st_gid) == (3, 4)
    assert sticky.st_mtime == 1_111_111_111  # set after its entries were created


def test_later_entries_replace_earlier_ones(tmp_path: Path) -> None:
    fs = _unpack(tmp_path, layer([
        file("a", b"first"), file("a", b"second"),
        directory("d"), file("d/x", b"x"), file("d", b"now a file"),
        symlink("s", "a"), file("s", b"plain"),
        # and each kind of entry in place of an earlier one
        file("l", b"old"), symlink("l", "a"),
        file("h", b"old"), hardlink("h", "a"),
        file("e", b"old"), directory("e"),
        directory("k"), file("k/kept", b"k"), directory("k", 0o700),
        file("p", b"old"), Entry("p", "fifo", mode=0o600),
        directory("n"), file("n/x", b"x"), Entry("n", "char", mode=0o600, dev=(1, 3)),
    ]))
    assert (fs / "a").read_bytes() == b"second"
    assert (fs / "d").read_bytes() == b"now a file"
    assert not (fs / "s").is_symlink() and (fs / "s").read_bytes() == b"plain"
    assert os.readlink(fs / "l") == "a"
    assert (fs / "h").stat().st_ino == (fs / "a").stat().st_ino
    assert (fs / "e").is_dir() and list((fs / "e").iterdir()) == []
    assert (fs / "k" / "kept").read_bytes() == b"k" and stat.S_IMODE((fs / "k").stat().st_mode) == 0o700
    assert stat.S_ISFIFO((fs / "p").lstat().st_mode)
    assert stat.S_ISCHR((fs / "n").lstat().st_mode) and (fs / "n").lstat().st_rdev == os.makedev(1, 3)


def test_whiteouts_under_a_real_overlay(tmp_path: Path) -> None:
    lower = _unpack(tmp_path, layer([
        file("keep", b"k"), file("gone", b"g"), directory("opaque"), file("opaque/old", b"o"),
        directory("dir"), file("dir/old", b"d"),
    ]), "lower")
    upper = _unpack(tmp_path, layer([
        file(".wh.gone"), directory("opaque"), file("opaque/.wh..wh..opq"), file("opaque/new", b"n"),
        file("dir/.wh.old"), file("dir/.wh..wh.plnk"),
    ], "zstd"), "upper")
    gone = (upper / "gone").lstat()
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(upper / "opaque", "trusted.overlay.opaque") == b"y"
    assert not (upper / "dir/.wh..wh.plnk").exists()
    target = tmp_path / "crisp-overlay-mnt"
    target.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={upper}:{lower}", str(target)],
                   check=True)
    try:
        assert sorted(os.listdir(target)) == ["dir", "keep", "opaque"]
        assert os.listdir(target / "opaque") == ["new"]
        assert os.listdir(target / "dir") == []
    finally:
        subprocess.run(["umount", str(target)], check=True)


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A dir outside the snapshot that escaping entries aim at; it must stay empty."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "victim").write_text("original")
    yield d
    assert sorted(p.name for p in d.iterdir()) == ["victim"]
    assert (d / "victim").read_text() == "original"


def _escapes(outside: Path) -> dict[str, list[Entry]]:
    return {
        "dotdot": [file("../../outside/evil", b"x")],
        "dotdot-deep": [directory("a"), file("a/../../outside/evil", b"x")],
        "absolute": [file(str(outside / "evil"), b"x")],
        "symlinked-parent": [symlink("link", str(outside)), file("link/evil", b"x")],
        "relative-symlinked-parent": [symlink("link", "../outside"), file("link/evil", b"x")],
        "symlinked-grandparent": [symlink("link", str(outside)), file("link/sub/evil", b"x")],
        "hardlink-outside-absolute": [hardlink("evil", str(outside / "victim"))],
        "hardlink-outside-dotdot": [hardlink("evil", "../outside/victim")],
        "hardlink-through-symlink": [symlink("link", str(outside)), hardlink("evil", "link/victim")],
        "hardlink-missing": [hardlink("evil", "not-in-this-layer")],
        "whiteout-dotdot": [file("../.wh.victim")],
        "symlink-then-overwrite": [symlink("victim-link", str(outside / "victim")), file("victim-link/x", b"x")],
    }


@pytest.mark.parametrize("case", sorted(_escapes(Path("/x"))))
def test_escapes_are_refused(tmp_path: Path, outside: Path, case: str) -> None:
    lay = layer(_escapes(outside)[case])
    blob = tmp_path / "blob"
    blob.write_bytes(lay.blob)
    dest = tmp_path / "snap" / "fs"
    dest.mkdir(parents=True)
    with pytest.raises(UnsafeLayer) as info:
        unpack_layer(blob, dest, lay.digest, lay.diff_id)
    assert isinstance(info.value, errors.InvalidArgument)
    assert lay.digest in str(info.value)


def test_not_a_tar_and_wrong_diff_id(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"\x1f\x8b this is not gzip at all")
    (tmp_path / "a").mkdir()
    with pytest.raises(UnsafeLayer):
        unpack_layer(blob, tmp_path / "a", "sha256:x")
    lay = layer([file("f", b"x")])
    blob.write_bytes(lay.blob)
    (tmp_path / "b").mkdir()
    with pytest.raises(UnsafeLayer, match=r"the image config says"):
        unpack_layer(blob, tmp_path / "b", lay.digest, "sha256:" + "0" * 64)


def test_corrupt_gzip_is_an_unsafe_layer(tmp_path: Path) -> None:
    """A gzip stream that cannot be inflated, or inflates to other bytes than it says, fails the layer."""
    good = layer([file("f", b"x" * 4096)]).blob
    assert good[3] == 0  # no optional header fields: the deflate data starts at byte 10
    bad_block = good[:10] + bytes([good[10] | 0b110]) + good[11:]  # block type 3: reserved, invalid
    bad_crc = good[:-8] + bytes(b ^ 0xFF for b in good[-8:-4]) + good[-4:]
    for name, blob_bytes, reason in (("block", bad_block, "not a valid tar stream"),
                                     ("crc", bad_crc, "CRC check failed")):
        blob = tmp_path / f"{name}.blob"
        blob.write_bytes(blob_bytes)
        (tmp_path / name).mkdir()
        with pytest.raises(UnsafeLayer, match=reason):
            unpack_layer(blob, tmp_path / name, "sha256:x")


def _inflating_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "crisp-inflate"]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "plain"])
def test_a_failed_or_cancelled_unpack_leaves_no_thread(tmp_path: Path, compression: str) -> None:
    """The thread that inflates ahead is stopped and waited for whatever ends the unpack: a refused entry with
    megabytes still to inflate behind it (the thread waits to hand over a chunk), or a cancelled pull."""
    noise = random.Random(7).randbytes(4 * MiB)  # incompressible: chunks of it fill the thread's queue
    lay = layer([file("../evil", b"x"), file("big", noise)], compression)
    blob = tmp_path / "blob"
    blob.write_bytes(lay.blob)
    (tmp_path / "a").mkdir()
    with pytest.raises(UnsafeLayer, match=r"contains '\.\.'") as refused:
        unpack_layer(blob, tmp_path / "a", lay.digest, lay.diff_id)
    # asked while the traceback still holds the unpack's frames (and so its reader: no finalizer stopped it)
    assert refused.tb is not None and _inflating_threads() == []
    cancel = threading.Event()
    (tmp_path / "b").mkdir()
    with pytest.raises(errors.Cancelled) as cancelled:
        unpack_layer(blob, tmp_path / "b", lay.digest, lay.diff_id, cancel,
                     on_entry=lambda _member: cancel.set())
    assert cancelled.tb is not None and _inflating_threads() == []
    good = layer([file("big", noise)], compression)
    blob.write_bytes(good.blob)
    (tmp_path / "c").mkdir()
    result = unpack_layer(blob, tmp_path / "c", good.digest, good.diff_id)
    assert result.tar_size == len(tar_bytes([file("big", noise)]))
    assert (tmp_path / "c" / "big").read_bytes() == noise
    assert _inflating_threads() == []


def test_store_commit_and_delete_snapshot(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    store.prepare()
    lay = layer([file("f", b"x")])
    tmp = store.new_tmp_dir("unpack-")
    (tmp / "fs").mkdir()
    blob = store.put_blob(lay.digest, lay.blob)
    unpack_layer(blob, tmp / "fs", lay.digest, lay.diff_id)
    fs = store.commit_snapshot(lay.diff_id, tmp)
    assert (fs / "f").read_bytes() == b"x" and store.has_snapshot(lay.diff_id)
    assert list(store.snapshots()) == [lay.diff_id] and list(store.blobs()) == [lay.digest]
    store.delete_snapshot(lay.diff_id)
    assert not store.has_snapshot(lay.diff_id)
    assert list(store.tmp_dir.iterdir()) == []


def test_store_retire_snapshot_and_collect_later(tmp_path: Path) -> None:
    """A snapshot retired (RemoveImage's GC) is out of the store at once; its files wait in tmp/ for the caller to
    delete, and a crispd that died before that finds them thrown away by the next start's prepare()."""
    store = ImageStore(tmp_path / "images")
    store.prepare()
    lays = [layer([file("f", b"x")]), layer([file("g", b"y")])]
    for lay in lays:
        tmp = store.new_tmp_dir("unpack-")
        (tmp / "fs").mkdir()
        unpack_layer(store.put_blob(lay.digest, lay.blob), tmp / "fs", lay.digest, lay.diff_id)
        store.commit_snapshot(lay.diff_id, tmp)
    assert store.retire_snapshot("sha256:" + "ab" * 32) is None  # no such snapshot
    kept, gone = lays
    result = collect(store, {kept.digest}, {kept.diff_id}, later=True)
    assert result.blobs == (gone.digest,) and result.snapshots == (gone.diff_id,)
    assert list(store.snapshots()) == [kept.diff_id] and list(store.blobs()) == [kept.digest]
    (retired,) = result.retired
    assert retired.parent == store.tmp_dir and (retired / "snapshot/fs/g").read_bytes() == b"y"
    store.prepare()  # the next start
    assert list(store.tmp_dir.iterdir()) == [] and store.has_snapshot(kept.diff_id)
