"""The content-addressed blob store and the layer snapshot dirs under `<root>/images`.

    blobs/sha256/<hex>        verified blobs only (manifests, indexes, configs, layers)
    snapshots/<chainid hex>/fs  one unpacked layer, an overlayfs lower dir
    tmp/                      downloads and unpacks in progress (cleared at start)

A blob is written to a temp file under tmp/, hashed while it is written, fsynced, and renamed into blobs/ only when
its digest and size match: a crash never leaves a half blob visible. Every method here does file I/O: call them from
worker threads, never from the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from runtime import errors
from runtime.fstree import remove_tree
from runtime.image.reference import is_sha256_digest

log = logging.getLogger(__name__)


class DigestMismatch(errors.Unavailable):
    """Content did not match its digest or size (a corrupt transfer or a lying registry)."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _hex(digest: str) -> str:
    if not is_sha256_digest(digest):
        raise errors.InvalidArgument(f"unsupported digest {digest!r}")
    return digest.split(":", 1)[1]


class BlobWriter:
    """A blob being written: hashes what it is given; `commit` verifies and publishes it, `abort` discards it."""

    def __init__(self, store: ImageStore, digest: str, size: int | None) -> None:
        self._store = store
        self.digest = digest
        self.expected_size = size
        self._what = f"blob {digest} in {store.root}"
        with errors.writing(self._what):
            fd, name = tempfile.mkstemp(prefix="blob-", dir=store.tmp_dir)
        self.tmp_path = Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.written = 0

    def write(self, data: bytes) -> None:
        with errors.writing(self._what):  # not an OSError: no registry host is to blame
            self._file.write(data)
        self._hash.update(data)
        self.written += len(data)
        if self.expected_size is not None and self.written > self.expected_size:
            raise DigestMismatch(f"blob {self.digest}: more data than its size {self.expected_size}")

    def commit(self) -> Path:
        """Verify size and digest, fsync, rename into place; returns the blob's path."""
        try:
            if self.expected_size is not None and self.written != self.expected_size:
                raise DigestMismatch(
                    f"blob {self.digest}: got {self.written} bytes, expected {self.expected_size}")
            actual = "sha256:" + self._hash.hexdigest()
            if actual != self.digest:
                raise DigestMismatch(f"blob {self.digest}: content has digest {actual} (corrupt or tampered)")
            with errors.writing(self._what):
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                target = self._store.blob_path(self.digest)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(self.tmp_path, 0o644)
                os.replace(self.tmp_path, target)
                _fsync_dir(target.parent)
            return target
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp_path.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ImageStore:
    """Blobs and snapshots on disk (no metadata: that lives in the SQLite store)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs" / "sha256"
        self.snapshots_dir = root / "snapshots"
        self.tmp_dir = root / "tmp"

    def prepare(self) -> None:
        """Create the dirs and throw away whatever a previous crispd left in tmp/."""
        for d in (self.root, self.blobs_dir, self.snapshots_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.tmp_dir.exists():
            for entry in self.tmp_dir.iterdir():
                log.info("removing leftover %s", entry)
                remove_tree(entry)
        self.tmp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # ------------------------------------------------------------------------------------------------ blobs

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / _hex(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise errors.NotFound(f"blob {digest} is not in the content store") from None

    def writer(self, digest: str, size: int | None) -> BlobWriter:
        _hex(digest)
        return BlobWriter(self, digest, size)

    def put_blob(self, digest: str, data: bytes) -> Path:
        """Store bytes already in memory (a manifest or config) under their verified digest."""
        if self.has_blob(digest):
            if sha256_digest(data) != digest:
                raise DigestMismatch(f"blob {digest}: content has digest {sha256_digest(data)}")
            return self.blob_path(digest)
        w = self.writer(digest, len(data))
        try:
            w.write(data)
        except BaseException:
            w.abort()
            raise
        return w.commit()

    def blobs(self) -> Iterator[str]:
        if not self.blobs_dir.is_dir():
            return
        for entry in os.scandir(self.blobs_dir):
            digest = f"sha256:{entry.name}"
            if is_sha256_digest(digest):
                yield digest

    def delete_blob(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.blob_path(digest).unlink()

    # ------------------------------------------------------------------------------------------------ snapshots

    def snapshot_dir(self, chain_id: str) -> Path:
        """The snapshot of a layer chain; its `fs` subdir is the overlay lower dir."""
        return self.snapshots_dir / _hex(chain_id)

    def snapshot_fs(self, chain_id: str) -> Path:
        return self.snapshot_dir(chain_id) / "fs"

    def has_snapshot(self, chain_id: str) -> bool:
        return self.snapshot_fs(chain_id).is_dir()

    def snapshots(self) -> Iterator[str]:
        if not self.snapshots_dir.is_dir():
            return
        for entry in os.scandir(self.snapshots_dir):
            chain_id = f"sha256:{entry.name}"
            if is_sha256_digest(chain_id):
                yield chain_id

    def new_tmp_dir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp_dir))

    def commit_snapshot(self, chain_id: str, tmp: Path) -> Path:
        """Publish an unpacked snapshot dir (tmp holds `fs`); if another pull published it first, keep theirs."""
        target = self.snapshot_dir(chain_id)
        try:
            os.rename(tmp, target)
        except OSError:
            if not self.has_snapshot(chain_id):
                raise
            remove_tree(tmp)
        else:
            _fsync_dir(self.snapshots_dir)
        return target / "fs"

    def delete_snapshot(self, chain_id: str) -> None:
        """Remove a snapshot: first renamed into tmp/ (atomic: never seen half-removed), then deleted."""
        retired = self.retire_snapshot(chain_id)
        if retired is not None:
            remove_tree(retired)

    def retire_snapshot(self, chain_id: str) -> Path | None:
        """Take a snapshot out of the store: renamed into tmp/ (atomic), the dir that the caller deletes (None if
        there was no such snapshot). Whatever tmp/ still holds at the next start is thrown away (`prepare`)."""
        src = self.snapshot_dir(chain_id)
        if not src.exists():
            return None
        dst = Path(tempfile.mkdtemp(prefix="rm-", dir=self.tmp_dir))
        os.rename(src, dst / "snapshot")
        return dst
