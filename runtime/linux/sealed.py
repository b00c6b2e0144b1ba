"""A sealed in-memory copy of a program, to run instead of the file itself (runc's defence since 1.2).

A process forked from crisp's Python is a container's init until its final exec. If that exec's program is a
script starting `#!/proc/self/exe`, the kernel resolves the interpreter through the init's own /proc/self/exe,
which would be the host's Python binary: the container would run it and could, once it ends, open it for writing
(CVE-2019-5736's shape). Processes that fork container inits (the shim zygote, hence every shim and every command
of the resident executor) therefore run from a memfd copy of the interpreter, sealed against any write: through
/proc/self/exe a container reaches only that copy, which nobody can change.
"""

from __future__ import annotations

import fcntl
import os

SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def sealed_copy(path: str, name: str) -> int:
    """A memfd (close-on-exec) holding the bytes of `path` (symlinks followed), sealed; to exec it, pass it to the
    child and exec `/proc/self/fd/<fd>` there."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        with open(path, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            offset = 0
            while offset < size:
                sent = os.sendfile(fd, source.fileno(), offset, size - offset)
                if sent == 0:
                    raise OSError(f"{path} shrank while it was copied")
                offset += sent
        os.fchmod(fd, 0o555)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_sealed(fd: int) -> bool:
    """Whether fd is a memfd with every seal of `sealed_copy` (False for a file that cannot have seals)."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS == SEALS
    except OSError:
        return False
