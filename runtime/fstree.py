"""Walking and removing directory trees that hostile content made: any depth, any width, a few fds.

A layer may hold directories 2,000 deep (a 4 KiB name) and a container may make deeper ones in its writable
layer. `shutil.rmtree` and `os.walk` (Python 3.11) recurse once per level: past ~1,000 they raise RecursionError
(a RemoveContainer, an image GC or an ImageFsInfo that fails for good), and paths past 4 KiB cannot even be
named. Here the walk goes down by `openat(fd, name)` and back up by `..` (checked to be the dir it came from), so
it holds two fds at most and no path longer than one name; what is left to visit is kept in lists. Symlinks are
never followed, and other filesystems mounted below are not entered (the walk stays on the top's device).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# (the fd of the dir an entry is in, its name, its lstat)
Visit = Callable[[int, str, os.stat_result], None]
# (the fd of the parent, the name of the dir that is done)
Leave = Callable[[int, str], None]


def _walk(top: str, visit: Visit, leave: Leave | None, dir_fd: int | None = None) -> None:
    """Every entry below `top` (not `top` itself), each dir visited before what is in it; `leave` after all of
    it (post-order). Entries that vanish meanwhile are skipped."""
    fd = os.open(top, _DIR, dir_fd=dir_fd)
    try:
        top_st = os.fstat(fd)
        # per dir on the way down: its name in its parent, its (dev, ino), the subdirs of it still to do
        frames: list[tuple[str, tuple[int, int], list[str]]] = []
        name = ""
        here = top_st
        while True:
            subdirs = []
            with os.scandir(fd) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    visit(fd, entry.name, st)
                    if stat.S_ISDIR(st.st_mode) and st.st_dev == top_st.st_dev:
                        subdirs.append(entry.name)
            frames.append((name, (here.st_dev, here.st_ino), subdirs))
            while True:
                name, _, pending = frames[-1]
                if pending:
                    child = pending.pop()
                    try:
                        child_fd = os.open(child, _DIR, dir_fd=fd)
                    except (FileNotFoundError, NotADirectoryError):
                        continue
                    os.close(fd)
                    fd, name = child_fd, child
                    here = os.fstat(fd)
                    break
                frames.pop()
                if not frames:
                    return
                parent = os.open("..", _DIR, dir_fd=fd)
                st = os.fstat(parent)
                if (st.st_dev, st.st_ino) != frames[-1][1]:
                    os.close(parent)
                    raise OSError(errno.ESTALE, f"{top}: a directory was moved while it was walked")
                os.close(fd)
                fd = parent
                if leave is not None:
                    leave(fd, name)
    finally:
        os.close(fd)


# how many times tree_usage measures a tree whose dirs move while it walks it (a GC retiring snapshots into the
# image store's tmp/, a container's `mv` in its writable layer) before it gives up (ESTALE)
USAGE_TRIES = 3


def tree_usage(path: str) -> tuple[int, int]:
    """Bytes (allocated blocks) and inodes used under path (itself included), each hardlinked inode once;
    (0, 0) when it does not exist. A tree whose dirs move while it is walked is measured again."""
    for tries_left in reversed(range(USAGE_TRIES)):
        try:
            return _tree_usage(path)
        except OSError as exc:
            if exc.errno != errno.ESTALE or not tries_left:
                raise
    raise AssertionError("unreachable")


def _tree_usage(path: str) -> tuple[int, int]:
    try:
        st = os.lstat(path)
    except OSError:
        return 0, 0
    seen = {(st.st_dev, st.st_ino)}
    total = st.st_blocks * 512
    if not stat.S_ISDIR(st.st_mode):
        return total, 1

    def visit(_: int, __: str, entry: os.stat_result) -> None:
        nonlocal total
        key = (entry.st_dev, entry.st_ino)
        if key not in seen:
            seen.add(key)
            total += entry.st_blocks * 512

    with contextlib.suppress(FileNotFoundError):
        _walk(path, visit, None)
    return total, len(seen)


def remove_tree(path: str | Path, ignore_errors: bool = False, dir_fd: int | None = None) -> None:
    """Remove a file or a whole dir tree (read-only dirs included: we are root); absent is fine. With
    `ignore_errors` whatever cannot be removed stays and the rest goes (as shutil.rmtree's). `dir_fd`: `path`
    is a name in that dir."""
    path = str(path)
    try:
        st = os.lstat(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    try:
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path, dir_fd=dir_fd)
            return

        def visit(dir_fd: int, name: str, entry: os.stat_result) -> None:
            if not stat.S_ISDIR(entry.st_mode):
                _quietly(ignore_errors, os.unlink, name, dir_fd=dir_fd)

        def leave(parent_fd: int, name: str) -> None:
            _quietly(ignore_errors, os.rmdir, name, dir_fd=parent_fd)

        _walk(path, visit, leave, dir_fd)
        os.rmdir(path, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError:
        if not ignore_errors:
            raise


def _quietly(ignore_errors: bool, fn: Callable[..., None], *args: object, **kwargs: object) -> None:
    try:
        fn(*args, **kwargs)
    except FileNotFoundError:
        pass
    except OSError:
        if not ignore_errors:
            raise
