"""Mounts made by crispd itself (pod /dev/shm, namespace pins), through util-linux in a child process.

crispd does no mount syscalls itself: these run `mount`/`umount` as programs (started from a worker thread, see
runtime/command.py), which also keeps them out of crispd's own mount namespace handling.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.command import run_command

MOUNT_TIMEOUT = 30.0


async def _run(argv: list[str], what: str) -> None:
    result = await run_command(argv, kill_after=MOUNT_TIMEOUT, what=what)
    if result.returncode != 0:
        raise OSError(f"{what}: {result.message()}")


def is_mountpoint(path: Path) -> bool:
    """True if something is mounted on path (a directory or a file bind mount)."""
    try:
        return os.path.ismount(path)
    except OSError:
        return False


async def mount_tmpfs(target: Path, *, size_bytes: int, options: str = "nosuid,nodev,noexec", mode: int = 0o1777
                      ) -> None:
    await _run(["mount", "-t", "tmpfs", "-o", f"{options},size={size_bytes},mode={mode:o}", "shm", str(target)],
               f"mount tmpfs on {target}")


async def bind_mount(source: str, target: Path) -> None:
    await _run(["mount", "--bind", source, str(target)], f"bind {source} on {target}")


async def unmount(target: Path, *, lazy: bool = True) -> None:
    """Unmount target if it is a mount point (every mount stacked on it); a missing or unmounted path is fine."""
    while is_mountpoint(target):
        await _run(["umount", *(["--lazy"] if lazy else []), str(target)], f"unmount {target}")
