"""Id-mapped mounts (mount_setattr with MOUNT_ATTR_IDMAP, Linux 5.12+) for pods with a user namespace of their own.

A user-namespaced container sees its rootfs and volumes with its own ids through id-mapped mounts, never through
chowned image layers. `stage` makes the mounts a bundle's idmap annotation lists (runtime.bundle.Idmap) in the
caller's mount namespace: an id-mapped clone of each source, attached on its target, and read-only overlays of
staged layers (overlayfs cannot be id-mapped itself, its layers can). The built-in executor stages inside the
container's mount namespace before joining the user namespace; the shim stages for runc and crun in the host's,
as `python -m runtime.linux.idmap stage|unstage BUNDLE`. `probe` says whether a directory's filesystem can be
id-mapped on this kernel. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

from runtime import errors
from runtime.bundle import Idmap, Overlay, idmap_of, load_config
from runtime.linux import syscalls as sc

USERNS_TIMEOUT = 10.0  # for a throwaway user namespace's holder to be in it

# (container id, host id, length), as CRI and OCI give them
Mapping = tuple[int, int, int]


def map_text(mappings: Sequence[Mapping]) -> str:
    """/proc/<pid>/uid_map and gid_map content."""
    return "".join(f"{c} {h} {n}\n" for c, h, n in mappings)


def write_maps(pid: int, uids: Sequence[Mapping], gids: Sequence[Mapping]) -> None:
    """Give the user namespace of `pid` (just made, no map yet) its mappings; once only (the kernel's rule)."""
    for name, mappings in (("uid_map", uids), ("gid_map", gids)):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(map_text(mappings))


def idmapped_bind(source: str, target: str, userns_fd: int) -> None:
    """Attach an id-mapped clone of the mount tree at `source` (recursively) on `target`."""
    fd = sc.open_tree(sc.AT_FDCWD, source, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_RECURSIVE)
    try:
        sc.mount_setattr(fd, "", sc.AT_EMPTY_PATH | sc.AT_RECURSIVE, sc.MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
        sc.move_mount(fd, "", sc.AT_FDCWD, target, sc.MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(fd)


def _make_target(source: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    if source and not os.path.isdir(source):
        with open(target, "a"):
            pass
    else:
        os.makedirs(target, mode=0o755, exist_ok=True)


def stage(idmap: Idmap) -> None:
    """Make the staged mounts in this mount namespace, in order. A source whose filesystem cannot be id-mapped is
    FailedPrecondition naming it; what was staged before a failure stays (the caller's namespace or unstage)."""
    try:
        userns_fd = os.open(idmap.userns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise errors.NotFound(f"user namespace {idmap.userns}: {exc.strerror}") from None
    try:
        for m in idmap.mounts:
            _make_target(m.source, m.target)
            if m.source:
                try:
                    idmapped_bind(m.source, m.target, userns_fd)
                except OSError as exc:
                    raise errors.FailedPrecondition(
                        f"{m.source} cannot be id-mapped for the pod's user namespace ({exc.strerror}): its "
                        "filesystem does not support id-mapped mounts on this kernel") from None
                continue
            data, _ = Overlay(lowerdirs=m.lowerdirs).mount_data()
            try:
                sc.mount("overlay", m.target, "overlay", sc.MS_RDONLY, data)
            except OSError as exc:
                raise errors.FailedPrecondition(f"read-only overlay on {m.target}: {exc.strerror}") from None
    finally:
        os.close(userns_fd)


def unstage(idmap: Idmap) -> list[str]:
    """Detach the staged mounts (last first); returns what could not be (absent ones are fine). A bind of a
    directory of the same filesystem is no mount point to os.path.ismount: umount until the kernel says none."""
    failed = []
    for m in reversed(idmap.mounts):
        while True:
            try:
                sc.umount2(m.target, sc.MNT_DETACH)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOENT):
                    failed.append(f"{m.target}: {exc.strerror}")
                break
    return failed


@contextlib.contextmanager
def throwaway_userns() -> Iterator[int]:
    """An fd of a new user namespace with a one-id mapping, for probing (a `sleep` holds it while it is made)."""
    holder = subprocess.Popen(["unshare", "--user", "sleep", "30"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        own = os.readlink("/proc/self/ns/user")
        # bounded by time, not by tries: on a busy or emulated machine the child may take long to get there
        deadline = time.monotonic() + USERNS_TIMEOUT
        while os.readlink(f"/proc/{holder.pid}/ns/user") == own:
            if holder.poll() is not None:
                raise OSError(f"unshare --user exited with status {holder.returncode}")
            if time.monotonic() > deadline:
                raise OSError(f"unshare --user did not make a user namespace within {USERNS_TIMEOUT:g}s")
            time.sleep(0.001)
        write_maps(holder.pid, [(0, 65534, 1)], [(0, 65534, 1)])
        fd = os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)
    finally:
        holder.kill()
        holder.wait()


def probe(paths: Sequence[str], userns: str = "", *, recursive: bool = False) -> dict[str, str]:
    """For each path: "" when its filesystem (`recursive`: and every mount below it, as a volume's rbind takes
    them) can be id-mapped here, else why not. Through the user namespace pinned at `userns`, or a throwaway one.
    Nothing gets mounted (the id-mapped clone is never attached). Blocking; needs root."""
    try:
        if userns:
            fd = os.open(userns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return {path: _probe_one(path, fd, recursive) for path in paths}
            finally:
                os.close(fd)
        with throwaway_userns() as fd:
            return {path: _probe_one(path, fd, recursive) for path in paths}
    except OSError as exc:
        return {path: f"no user namespace to probe with: {exc.strerror or exc}" for path in paths}


def _probe_one(path: str, userns_fd: int, recursive: bool) -> str:
    rec = sc.AT_RECURSIVE if recursive else 0
    try:
        fd = sc.open_tree(sc.AT_FDCWD, path, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | rec)
        try:
            sc.mount_setattr(fd, "", sc.AT_EMPTY_PATH | rec, sc.MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return ""


def main(argv: list[str]) -> int:
    """`stage BUNDLE` / `unstage BUNDLE` (the shim, for OCI runtimes): errors as one JSON line on stderr."""
    try:
        if len(argv) != 2 or argv[0] not in ("stage", "unstage"):
            raise errors.InvalidArgument("usage: python -m runtime.linux.idmap stage|unstage BUNDLE")
        idmap = idmap_of(load_config(argv[1]).get("annotations"))
        if idmap is None:
            return 0
        if argv[0] == "stage":
            try:
                stage(idmap)
            except BaseException:
                unstage(idmap)
                raise
            return 0
        failed = unstage(idmap)
        if failed:
            raise errors.CrispError("cannot unmount " + "; ".join(failed))
        return 0
    except errors.CrispError as exc:
        print(json.dumps({"kind": errors.kind_of(exc), "message": str(exc)}), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
