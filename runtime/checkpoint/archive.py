"""A container checkpoint archive in the layout checkpointctl (and CRI-O, Podman) reads: an uncompressed tar of

  checkpoint/       CRIU's image files
  dump.log          CRIU's log of the dump
  config.dump       JSON: id, name, rootfsImageName, rootfsImageRef, runtime, createdTime, checkpointedTime
  spec.dump         the container's OCI spec (the bundle's config.json)
  rootfs-diff.tar   what the container changed in its root filesystem: its overlay upper dir, whiteouts left out
  deleted.files     JSON list of the paths it deleted (the upper dir's whiteouts), each from the container's /

The parts are made in a staging directory; the archive is written next to its location under a temporary name
and renamed into place, so a reader never sees half an archive and a failure leaves none. Standard library only.
"""

from __future__ import annotations

import json
import os
import stat
import tarfile
import time
from collections.abc import Mapping
from typing import Any

CHECKPOINT_DIR = "checkpoint"
CONFIG_DUMP = "config.dump"
SPEC_DUMP = "spec.dump"
ROOTFS_DIFF = "rootfs-diff.tar"
DELETED_FILES = "deleted.files"
PARTS = (CHECKPOINT_DIR, "dump.log", CONFIG_DUMP, SPEC_DUMP, ROOTFS_DIFF, DELETED_FILES)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def write_rootfs_diff(upperdir: str, tar_path: str) -> list[str]:
    """rootfs-diff.tar from an overlay upper dir (owners, modes and times as they are); returns the deleted
    paths (its whiteouts, absolute in the container). The walk keeps its own stack: any depth."""
    deleted: list[str] = []
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        pending = [""] if upperdir else []
        while pending:
            relative = pending.pop()
            with os.scandir(os.path.join(upperdir, relative)) as entries:
                children = sorted(entries, key=lambda e: e.name)
            for entry in children:
                name = os.path.join(relative, entry.name)
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # the container removed it meanwhile
                if _is_whiteout(st):
                    deleted.append("/" + name)
                    continue
                info = tar.gettarinfo(entry.path, arcname=name)
                if info is None:
                    continue  # a socket: nothing a tar can hold
                if info.isreg():
                    with open(entry.path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
                if entry.is_dir(follow_symlinks=False):
                    pending.append(name)
    return sorted(deleted)


def config_dump(*, container_id: str, name: str, image_name: str, image_ref: str, runtime: str, created_ns: int,
                checkpointed_ns: int) -> dict[str, Any]:
    return {"id": container_id, "name": name, "rootfsImageName": image_name, "rootfsImageRef": image_ref,
            "runtime": runtime, "createdTime": _rfc3339(created_ns), "checkpointedTime": _rfc3339(checkpointed_ns)}


def _rfc3339(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:09d}Z"


def write_metadata(staging: str, *, config: Mapping[str, Any], spec: Mapping[str, Any], deleted: list[str]) -> None:
    for name, data in ((CONFIG_DUMP, config), (SPEC_DUMP, spec), (DELETED_FILES, deleted)):
        with open(os.path.join(staging, name), "w") as f:
            json.dump(data, f, indent=2)


def write_archive(staging: str, location: str) -> None:
    """The staging dir's parts as the tar at `location` (written beside it, then renamed over it)."""
    directory, base = os.path.split(location)
    temporary = os.path.join(directory, f".{base}.crisp-partial-{os.getpid()}")
    try:
        with tarfile.open(temporary, "w", format=tarfile.PAX_FORMAT) as tar:
            for part in PARTS:
                path = os.path.join(staging, part)
                if os.path.lexists(path):
                    tar.add(path, arcname=part)  # checkpoint/ is flat: CRIU's images are one directory
        os.chmod(temporary, 0o600)
        os.rename(temporary, location)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
