"""Paths inside a container's root, resolved by the kernel with openat2(RESOLVE_IN_ROOT).

A symlink in the image (`/etc -> /`, `../../../../host`) resolves as it would after pivot_root: inside the root,
never out of it. Mount targets are O_PATH fds, and mounts go onto `/proc/self/fd/<fd>`, so the object checked is
the object mounted on (no window between check and use).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from runtime.linux import syscalls as sc

RESOLVE = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS
O_PATH_DIR = os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY


def fd_path(fd: int) -> str:
    """The magic link that names an open fd (a mount target or source)."""
    return f"/proc/self/fd/{fd}"


def open_in_root(sys: sc.Syscalls, root_fd: int, path: str, flags: int = os.O_PATH | os.O_CLOEXEC) -> int:
    return sys.openat2(root_fd, path, flags | os.O_CLOEXEC, 0, RESOLVE)


MAX_SYMLINKS = 40  # as the kernel's path walk (ELOOP)


def resolve_in_root(sys: sc.Syscalls, root_fd: int, path: str) -> str:
    """The path `path` names inside the root, every symlink that exists followed (inside the root, as after
    pivot_root, dangling ones too) and the components that do not exist kept as written, as runc's SecureJoin
    does: where a mount (or a dir made for one) really lands, before anything is made."""
    pending = [p for p in path.split("/") if p not in ("", ".")]
    pending.reverse()
    resolved: list[str] = []
    links = 0
    while pending:
        name = pending.pop()
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        try:
            dir_fd = open_in_root(sys, root_fd, "/" + "/".join(resolved), O_PATH_DIR)
        except OSError as exc:
            if not missing(exc):
                raise
            resolved.append(name)  # under a dir that is yet to be made: nothing to follow
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            target = os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else None
        except OSError as exc:
            if not missing(exc):
                raise
            target = None
        finally:
            os.close(dir_fd)
        if target is None:
            resolved.append(name)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        if target.startswith("/"):
            resolved = []
        pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
    return "/" + "/".join(resolved)


def path_in_root(root_fd: int, fd: int) -> str:
    """The path of `fd` inside the root, as the kernel names it (before pivot_root: the host's /proc)."""
    root = os.readlink(fd_path(root_fd))
    where = os.readlink(fd_path(fd))
    if where == root:
        return "/"
    if not where.startswith(root.rstrip("/") + "/"):
        raise OSError(errno.EXDEV, f"{where} is not inside the root {root}")
    return where[len(root.rstrip("/")):]


def _split(path: str) -> tuple[str, str]:
    path = posixpath.normpath("/" + path)
    return posixpath.dirname(path), posixpath.basename(path)


def ensure_dir(sys: sc.Syscalls, root_fd: int, path: str, mode: int = 0o755) -> int:
    """An O_PATH fd of the directory `path` inside the root, making it and its parents as `mkdir -p` would."""
    try:
        return open_in_root(sys, root_fd, path, O_PATH_DIR)
    except FileNotFoundError:
        pass
    parent, name = _split(path)
    if not name:  # the root itself always exists
        return open_in_root(sys, root_fd, "/", O_PATH_DIR)
    parent_fd = ensure_dir(sys, root_fd, parent, mode)
    try:
        try:
            os.mkdir(name, mode, dir_fd=parent_fd)
        except FileExistsError:
            pass  # made meanwhile, or a dangling symlink: the open below tells which
        return open_in_root(sys, root_fd, path, O_PATH_DIR)
    finally:
        os.close(parent_fd)


def ensure_file(sys: sc.Syscalls, root_fd: int, path: str, mode: int = 0o644) -> int:
    """An O_PATH fd of `path` inside the root, creating an empty file (and the parent dirs) when it is missing."""
    try:
        return open_in_root(sys, root_fd, path)
    except FileNotFoundError:
        pass
    parent, name = _split(path)
    parent_fd = ensure_dir(sys, root_fd, parent)
    try:
        try:
            fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, mode,
                         dir_fd=parent_fd)
            os.close(fd)
        except FileExistsError:
            pass
        return open_in_root(sys, root_fd, path)
    finally:
        os.close(parent_fd)


def ensure_target(sys: sc.Syscalls, root_fd: int, path: str, like_dir: bool) -> int:
    return ensure_dir(sys, root_fd, path) if like_dir else ensure_file(sys, root_fd, path)


def is_dir_fd(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


def missing(exc: OSError) -> bool:
    return exc.errno in (errno.ENOENT, errno.ENOTDIR)
