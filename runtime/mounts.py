"""Mounts made by crispd itself (pod /dev/shm, namespace pins), through util-linux in a child process.

crispd does no mount syscalls on its event loop: these run `mount`/`umount` as subprocesses, which also keeps them
out of crispd's own threads.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from runtime import errors

MOUNT_TIMEOUT = 30.0


async def _run(argv: list[str], what: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        close_fds=True)
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), MOUNT_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise errors.Unavailable(f"{what}: {argv[0]} did not finish within {MOUNT_TIMEOUT}s") from None
    if proc.returncode != 0:
        raise OSError(f"{what}: {stderr.decode(errors='replace').strip() or f'exit status {proc.returncode}'}")


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


async def unmount(target: Path, *, lazy: bool = True) -> None:
    """Unmount target if it is a mount point (every mount stacked on it); a missing or unmounted path is fine."""
    while is_mountpoint(target):
        await _run(["umount", *(["--lazy"] if lazy else []), str(target)], f"unmount {target}")
