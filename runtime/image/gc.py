"""Garbage collection of the image store: blobs and snapshots that nothing references any more.

The caller computes what is still referenced (images in the metadata store, pulls in progress, containers) and
holds off new references while `collect` runs; this module only deletes. Runs in a worker thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from runtime.fstree import tree_usage
from runtime.image.store import ImageStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcResult:
    blobs: tuple[str, ...]
    snapshots: tuple[str, ...]
    bytes_freed: int


def _du(path: str) -> int:
    return usage(path)[0]


def collect(store: ImageStore, keep_blobs: set[str], keep_snapshots: set[str]) -> GcResult:
    """Delete every blob not in keep_blobs and every snapshot (by chain id) not in keep_snapshots."""
    removed_blobs: list[str] = []
    removed_snapshots: list[str] = []
    freed = 0
    for digest in list(store.blobs()):
        if digest in keep_blobs:
            continue
        try:
            freed += store.blob_path(digest).stat().st_size
        except FileNotFoundError:
            continue
        store.delete_blob(digest)
        removed_blobs.append(digest)
    for chain_id in list(store.snapshots()):
        if chain_id in keep_snapshots:
            continue
        freed += _du(str(store.snapshot_dir(chain_id)))
        store.delete_snapshot(chain_id)
        removed_snapshots.append(chain_id)
    if removed_blobs or removed_snapshots:
        log.info("image GC removed %d blobs and %d snapshots (%.1f MB)", len(removed_blobs),
                 len(removed_snapshots), freed / 1e6)
    return GcResult(tuple(removed_blobs), tuple(removed_snapshots), freed)


def usage(path: str) -> tuple[int, int]:
    """Bytes (allocated blocks) and inodes used under path, each hardlinked inode counted once."""
    return tree_usage(path)
