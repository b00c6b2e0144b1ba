"""Mounts made by crispd itself (pod /dev/shm, namespace pins): mount(2) and umount2(2) in a worker thread.

crispd lives in the host's mount namespace, so its mounts land where the `mount` program's would; the calls are
made directly (runtime.linux.syscalls), not by starting util-linux for each, which cost a fork and an exec per
mount on the pod path.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from runtime.linux import syscalls as sc

# mount options of mount_tmpfs that are flags; the rest go to the filesystem as its data
_FLAGS = {"nosuid": sc.MS_NOSUID, "nodev": sc.MS_NODEV, "noexec": sc.MS_NOEXEC, "ro": sc.MS_RDONLY}


async def _call(call: Callable[[], None], what: str) -> None:
    try:
        await asyncio.to_thread(call)
    except OSError as exc:
        raise OSError(exc.errno, f"{what}: {exc.strerror or exc}") from None


def is_mountpoint(path: Path) -> bool:
    """True if something is mounted on path (a directory or a file bind mount)."""
    try:
        return os.path.ismount(path)
    except OSError:
        return False


async def mount_tmpfs(target: Path, *, size_bytes: int, options: str = "nosuid,nodev,noexec", mode: int = 0o1777
                      ) -> None:
    words = [o for o in options.split(",") if o]
    flags = 0
    for word in words:
        flags |= _FLAGS.get(word, 0)
    data = ",".join([*(w for w in words if w not in _FLAGS), f"size={size_bytes}", f"mode={mode:o}"])
    await _call(lambda: sc.mount("shm", str(target), "tmpfs", flags, data), f"mount tmpfs on {target}")


async def bind_mount(source: str | Path, target: Path) -> None:
    """Bind `source` (a file or a directory; a namespace file pins that namespace) on the existing `target`."""
    await _call(lambda: sc.mount(str(source), str(target), None, sc.MS_BIND), f"bind {source} on {target}")


async def unmount(target: Path, *, lazy: bool = True) -> None:
    """Unmount target if it is a mount point (every mount stacked on it); a missing or unmounted path is fine."""
    while is_mountpoint(target):
        await _call(lambda: sc.umount2(str(target), sc.MNT_DETACH if lazy else 0), f"unmount {target}")
