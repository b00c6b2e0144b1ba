"""Garbage collection of the image store: blobs and snapshots that nothing references any more.

The caller computes what is still referenced (images in the metadata store, pulls in progress, containers) and
holds off new references while `collect` runs; this module only deletes. Runs in a worker thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from runtime.fstree import tree_usage
from runtime.image.store import ImageStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcResult:
    blobs: tuple[str, ...]
    snapshots: tuple[str, ...]
    # the blobs' bytes: a snapshot's would take a walk of its whole tree (stat of every file) on top of the one
    # that deletes it, and RemoveImage waits for both
    blob_bytes_freed: int
    # with `later`: the removed snapshots' dirs under tmp/, for the caller to delete
    retired: tuple[Path, ...] = ()


def collect(store: ImageStore, keep_blobs: set[str], keep_snapshots: set[str], later: bool = False) -> GcResult:
    """Delete every blob not in keep_blobs and every snapshot (by chain id) not in keep_snapshots. With `later`,
    a snapshot is only taken out of the store (renamed into tmp/) and its files are left for the caller to
    delete (`GcResult.retired`): unlinking every file of a layer is most of an image removal's time."""
    removed_blobs: list[str] = []
    removed_snapshots: list[str] = []
    retired: list[Path] = []
    blob_bytes = 0
    for digest in list(store.blobs()):
        if digest in keep_blobs:
            continue
        try:
            blob_bytes += store.blob_path(digest).stat().st_size
        except FileNotFoundError:
            continue
        store.delete_blob(digest)
        removed_blobs.append(digest)
    for chain_id in list(store.snapshots()):
        if chain_id in keep_snapshots:
            continue
        if later:
            if (dir_ := store.retire_snapshot(chain_id)) is not None:
                retired.append(dir_)
        else:
            store.delete_snapshot(chain_id)
        removed_snapshots.append(chain_id)
    if removed_blobs or removed_snapshots:
        log.info("image GC removed %d blobs (%.1f MB) and %d snapshots", len(removed_blobs), blob_bytes / 1e6,
                 len(removed_snapshots))
    return GcResult(tuple(removed_blobs), tuple(removed_snapshots), blob_bytes, tuple(retired))


def usage(path: str) -> tuple[int, int]:
    """Bytes (allocated blocks) and inodes used under path, each hardlinked inode counted once."""
    return tree_usage(path)
