"""A procfs of the container init's own, attached nowhere: what it uses instead of the container's /proc.

After pivot_root, `/proc` is whatever the spec and the image made of it. A volume that reached inside it (say
over `/proc/1/fd`, through an image symlink `/procl -> /proc`) would turn every `/proc/self/fd/N` the init
resolves (masking binds, the start fifo) and every `/proc/sys/...` it writes (sysctls) into a path of the
attacker's choosing. So the init never resolves anything through the container's /proc: it makes a procfs of its
pid namespace with fsopen/fsmount (a detached mount: no path leads to it, so nothing can be mounted over any part
of it), checks that it is one, and opens files below it with openat2 (no symlink, no mount crossing).
"""

from __future__ import annotations

import os

from runtime import errors
from runtime.linux import syscalls as sc

# below a private procfs: no symlink, no magic link, no mount to cross, no way out
_RESOLVE_BELOW = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS | sc.RESOLVE_NO_XDEV


def open_private(sys: sc.Syscalls, pid_only: bool = False) -> int:
    """A new procfs of the current pid namespace as a detached mount fd (close-on-exec). `pid_only` makes it
    show the process dirs only (`subset=pid`): enough to reopen our own fds, nothing of the machine."""
    try:
        fs = sys.fsopen("proc", sc.FSOPEN_CLOEXEC)
    except OSError as exc:
        raise errors.FailedPrecondition(f"cannot make a private procfs (fsopen): {exc.strerror}") from None
    try:
        if pid_only:
            sys.fsconfig(fs, sc.FSCONFIG_SET_STRING, "subset", "pid")
        sys.fsconfig(fs, sc.FSCONFIG_CMD_CREATE)
        mnt = sys.fsmount(fs, sc.FSMOUNT_CLOEXEC, sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV | sc.MOUNT_ATTR_NOEXEC)
    except OSError as exc:
        raise errors.FailedPrecondition(f"cannot make a private procfs: {exc.strerror}") from None
    finally:
        os.close(fs)
    if sc.fstatfs_type(mnt) != sc.PROC_SUPER_MAGIC:  # never expected: fsopen("proc") made it
        os.close(mnt)
        raise errors.FailedPrecondition("the private procfs is not a procfs")
    return mnt


def open_below(sys: sc.Syscalls, proc_fd: int, path: str, flags: int) -> int:
    """A file of the private procfs (`sys/net/ipv4/ip_forward`), never through a symlink or another mount."""
    return sys.openat2(proc_fd, path, flags | os.O_CLOEXEC, 0, _RESOLVE_BELOW)


def reopen_own_fd(proc_fd: int, fd: int, flags: int) -> int:
    """Open what our fd `fd` refers to anew (an O_PATH fd of the exec fifo, for writing) through the private
    procfs's magic link: the one path here that must follow a magic link, on a mount nobody else can reach."""
    return os.open(f"thread-self/fd/{fd}", flags | os.O_CLOEXEC, dir_fd=proc_fd)
