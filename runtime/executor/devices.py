"""The container's /dev: the devices every container gets, the spec's own, and the standard symlinks."""

from __future__ import annotations

import os
import stat

from runtime import errors
from runtime.executor import paths
from runtime.executor.oci import Device
from runtime.linux import syscalls as sc

# the devices the OCI runtime spec requires in every container (runc's list)
DEFAULT_DEVICES = (
    Device("/dev/null", "c", 1, 3, 0o666, 0, 0),
    Device("/dev/zero", "c", 1, 5, 0o666, 0, 0),
    Device("/dev/full", "c", 1, 7, 0o666, 0, 0),
    Device("/dev/random", "c", 1, 8, 0o666, 0, 0),
    Device("/dev/urandom", "c", 1, 9, 0o666, 0, 0),
    Device("/dev/tty", "c", 5, 0, 0o666, 0, 0),
)

SYMLINKS = (
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
)

_TYPES = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}


def all_devices(spec_devices: tuple[Device, ...]) -> list[Device]:
    """Defaults first, a spec device with the same path replaces its default."""
    listed = {d.path for d in spec_devices}
    return [d for d in DEFAULT_DEVICES if d.path not in listed] + list(spec_devices)


def create_device(sys: sc.Syscalls, root_fd: int, device: Device) -> None:
    parent, name = os.path.split(device.path)
    if not name or device.path.startswith("/dev/") is False:
        raise errors.InvalidArgument(f"linux.devices: {device.path!r} must be under /dev")
    parent_fd = paths.ensure_dir(sys, root_fd, parent)
    try:
        mode = (device.file_mode if device.file_mode is not None else 0o666) & 0o7777
        try:
            sys.mknod(name, _TYPES[device.type] | mode, os.makedev(device.major, device.minor), parent_fd)
        except FileExistsError:
            return  # already there (a /dev from the image, or listed twice): leave it
        except PermissionError:
            # in a user namespace no device can be made: bind the host's node of the same path (as runc does)
            _bind_host_device(sys, parent_fd, name, device)
            return
        os.chown(name, device.uid or 0, device.gid or 0, dir_fd=parent_fd, follow_symlinks=False)
        os.chmod(name, mode, dir_fd=parent_fd, follow_symlinks=False)
    finally:
        os.close(parent_fd)


def _bind_host_device(sys: sc.Syscalls, parent_fd: int, name: str, device: Device) -> None:
    try:
        st = os.stat(device.path)
    except OSError as exc:
        raise errors.FailedPrecondition(f"linux.devices: {device.path} cannot be made in a user namespace and the "
                                        f"host has none to bind ({exc.strerror})") from None
    if st.st_rdev != os.makedev(device.major, device.minor) or (st.st_mode & 0o170000) != _TYPES[device.type]:
        raise errors.FailedPrecondition(f"linux.devices: {device.path} cannot be made in a user namespace and the "
                                        "host's node of that path is another device")
    fd = os.open(name, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=parent_fd)
    try:
        sys.mount(device.path, paths.fd_path(fd), None, sc.MS_BIND)
    finally:
        os.close(fd)


def create_symlinks(sys: sc.Syscalls, root_fd: int) -> None:
    dev_fd = paths.ensure_dir(sys, root_fd, "/dev")
    try:
        links = list(SYMLINKS)
        if os.path.exists("/proc/kcore"):
            links.append(("/proc/kcore", "/dev/core"))
        for target, link in links:
            try:
                os.symlink(target, os.path.basename(link), dir_fd=dev_fd)
            except FileExistsError:
                pass
        # /dev/ptmx is the container's own devpts instance's ptmx
        try:
            os.unlink("ptmx", dir_fd=dev_fd)
        except FileNotFoundError:
            pass
        os.symlink("pts/ptmx", "ptmx", dir_fd=dev_fd)
    finally:
        os.close(dev_fd)


def is_dev_null(fd: int) -> bool:
    st = os.fstat(fd)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
