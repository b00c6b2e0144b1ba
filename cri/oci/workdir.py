"""A container's working dir, made in its writable layer at create where the image's symlinks take it.

moby does this at create; runc 1.1 fails on a working dir through a dangling symlink (`mkdir /app: file
exists`), the built-in executor makes it at start. Made here, every runtime handler finds it. Dirs the image has
on the way are copied up with their owner, mode and times, as overlayfs would.
"""

from __future__ import annotations

import os
import stat

from cri.oci.user import LayeredFiles
from runtime.errors import InvalidArgument


def make_working_dir(files: LayeredFiles, upper: str, cwd: str) -> None:
    """Make `cwd` (resolved in `files`, the container's layers) in `upper`, the container's fresh upper dir."""
    landed = files.resolve(cwd)
    found = files.lstat(landed)
    if found is not None and stat.S_ISDIR(found.st_mode):
        return
    parts = [p for p in landed.split("/") if p]
    for depth in range(1, len(parts) + 1):
        prefix = "/" + "/".join(parts[:depth])
        # the upper dir is ours and new: nothing in it is a symlink
        target = os.path.join(upper, *parts[:depth])
        here = files.lstat(prefix)
        if here is not None and not stat.S_ISDIR(here.st_mode):
            raise InvalidArgument(f"working directory {cwd!r}: {prefix} in the image is not a directory")
        if os.path.lexists(target):
            continue
        if here is None:
            os.mkdir(target, 0o755)
            continue
        os.mkdir(target, 0o700)
        os.chown(target, here.st_uid, here.st_gid)
        os.chmod(target, stat.S_IMODE(here.st_mode))
        os.utime(target, ns=(here.st_atime_ns, here.st_mtime_ns))
