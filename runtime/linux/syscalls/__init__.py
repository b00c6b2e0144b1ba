"""Every libc and raw system call crisp makes through ctypes, in this package (use_errno=True everywhere).

Each wrapper raises `OSError` with the real errno and the call's name, like the `os` module does. Nothing is
loaded at import: libc and libseccomp are opened on first use, so importing this module never touches the
system. `Syscalls` bundles the calls the executor makes into one object: the seam where unit tests record calls
(a subclass) while integration tests make them for real.

Layout: constants, then the loaders, then one section per concern (namespaces, mounts, paths, processes and
credentials, capabilities), then the `Syscalls` seam; libseccomp (`syscalls.libseccomp`, the executor's seccomp
filters) and bpf(2) (`syscalls.bpf`, the cgroup device filter) have a module each in this package, imported only
by what uses them. Other parts of crisp append wrappers at the end of the section they belong to, each in a small
commit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import signal
import struct
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- constants

# namespaces (clone(2), unshare(2), setns(2))
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
CLONE_INTO_CGROUP = 0x200000000  # clone3 only

# mount(2) flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MS_LAZYTIME = 0x2000000
MS_PROPAGATION = MS_SHARED | MS_SLAVE | MS_PRIVATE | MS_UNBINDABLE

# umount2(2)
MNT_FORCE = 0x1
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

# mount_setattr(2)
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR__ATIME = 0x70
MOUNT_ATTR_RELATIME = 0x0
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80
MOUNT_ATTR_NOSYMFOLLOW = 0x200000
MOUNT_ATTR_IDMAP = 0x100000

# *at() flags
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000

# the new mount API: open_tree(2), move_mount(2), fsopen(2), fsconfig(2), fsmount(2) (Linux 5.2)
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6

# statfs(2) f_type
PROC_SUPER_MAGIC = 0x9FA0

# openat2(2) resolve flags
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

# prctl(2)
PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_IS_SET = 1
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_LOWER = 3
PR_CAP_AMBIENT_CLEAR_ALL = 4

# close_range(2)
CLOSE_RANGE_UNSHARE = 0x2
CLOSE_RANGE_CLOEXEC = 0x4

# capget/capset
LINUX_CAPABILITY_VERSION_3 = 0x20080522

# raw syscall numbers for calls glibc 2.36 has no wrapper for (x86_64 and aarch64 share the new-style numbers)
_SYSCALL_NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": {"pivot_root": 155, "clone3": 435, "openat2": 437, "mount_setattr": 442, "close_range": 436, "bpf": 321,
               "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432},
    "aarch64": {"pivot_root": 41, "clone3": 435, "openat2": 437, "mount_setattr": 442, "close_range": 436, "bpf": 280,
                "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432},
}

# ---------------------------------------------------------------------------------------------- loaders


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def preload() -> None:
    """Open the C libraries crisp calls (libc, and libseccomp where installed) now: a process that forks workers
    (the shim zygote) does it once, and no fork looks them up again (ctypes.util.find_library runs ldconfig)."""
    _libc()
    _libc_holding_the_gil()
    from runtime.linux.syscalls import libseccomp

    try:
        libseccomp.preload()
    except OSError:
        pass  # no libseccomp: only a spec with seccomp needs it, and says so then


@functools.cache
def _syscall_number(name: str) -> int:
    machine = platform.machine()
    try:
        return _SYSCALL_NUMBERS[machine][name]
    except KeyError:
        raise OSError(38, f"{name}: no syscall number known for {machine}") from None


def _check(result: int, call: str, *paths: str | None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        shown = [p for p in paths if p]
        if len(shown) == 2:
            raise OSError(err, f"{call}: {os.strerror(err)}", shown[0], None, shown[1])
        if shown:
            raise OSError(err, f"{call}: {os.strerror(err)}", shown[0])
        raise OSError(err, f"{call}: {os.strerror(err)}")
    return result


def _path(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def _raw_syscall(name: str, *args: Any) -> int:
    fn = _libc().syscall
    fn.restype = ctypes.c_long
    return int(fn(ctypes.c_long(_syscall_number(name)), *args))


# ---------------------------------------------------------------------------------------------- processes


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls", "set_tid",
        "set_tid_size", "cgroup")]


@functools.cache
def _libc_holding_the_gil() -> ctypes.PyDLL:
    return ctypes.PyDLL(_libc()._name, use_errno=True)  # the same library, found once (find_library runs ldconfig)


def fork_into_cgroup(cgroup_fd: int) -> int:
    """os.fork(), with the child born in the cgroup v2 directory `cgroup_fd` (clone3's CLONE_INTO_CGROUP, Linux
    5.7): no migration afterwards, whose write to cgroup.procs waits for an RCU grace period (~15 ms here).

    Python's fork protocol is kept (PyOS_BeforeFork / AfterFork_Child / AfterFork_Parent, the GIL held across the
    call, as os.fork holds it). glibc's own fork bookkeeping is not done in the child: keep it single-threaded and
    short (the executor's stage 1 forks again with os.fork before anything runs in the container). Raises OSError
    (ENOSYS on older kernels, EBUSY/EOPNOTSUPP for a cgroup that cannot take processes): fall back to os.fork and a
    write to cgroup.procs."""
    args = _CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD, cgroup=cgroup_fd)
    syscall = _libc_holding_the_gil().syscall
    syscall.restype = ctypes.c_long
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = int(syscall(ctypes.c_long(_syscall_number("clone3")), ctypes.byref(args),
                      ctypes.c_size_t(ctypes.sizeof(args))))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone3: {os.strerror(err)}")
    return pid


def fork_born_in(cgroup_fd: int | None) -> tuple[int, bool]:
    """os.fork(), the child born in the cgroup v2 directory `cgroup_fd` when one is given and the kernel lets it
    (fork_into_cgroup), else where its parent is. Returns (the child's pid, 0 in the child; whether it was born in
    the cgroup: if not, and it belongs there, it is still to be moved in)."""
    if cgroup_fd is not None:
        try:
            return fork_into_cgroup(cgroup_fd), True
        except OSError as exc:
            log.debug("clone3 into the cgroup refused (%s): fork, then move", exc)
    return os.fork(), False


# ---------------------------------------------------------------------------------------------- namespaces


def unshare(flags: int) -> None:
    _check(_libc().unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc().setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def sethostname(name: str) -> None:
    data = name.encode()
    _check(_libc().sethostname(data, ctypes.c_size_t(len(data))), "sethostname")


def setdomainname(name: str) -> None:
    data = name.encode()
    _check(_libc().setdomainname(data, ctypes.c_size_t(len(data))), "setdomainname")


# ---------------------------------------------------------------------------------------------- mounts


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    result = _libc().mount(_path(source), _path(target), _path(fstype), ctypes.c_ulong(flags), _path(data))
    _check(result, "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc().umount2(_path(target), ctypes.c_int(flags)), "umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_raw_syscall("pivot_root", _path(new_root), _path(put_old)), "pivot_root", new_root)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(dirfd: int, path: str, flags: int, attr_set: int = 0, attr_clr: int = 0,
                  propagation: int = 0, userns_fd: int = 0) -> None:
    attr = _MountAttr(attr_set, attr_clr, propagation, userns_fd)
    result = _raw_syscall("mount_setattr", ctypes.c_int(dirfd), _path(path), ctypes.c_uint(flags),
                          ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    _check(result, "mount_setattr", path or None)


@functools.cache
def has_mount_setattr() -> bool:
    """Whether the kernel has mount_setattr(2) (Linux 5.12+): an invalid call fails with EBADF, not ENOSYS."""
    try:
        mount_setattr(-1, "", AT_EMPTY_PATH)
    except OSError as exc:
        return exc.errno != 38  # ENOSYS
    return True


def open_tree(dirfd: int, path: str, flags: int) -> int:
    """A mount (OPEN_TREE_CLONE: a detached copy of it, AT_RECURSIVE: with the mounts below) as an fd."""
    return _check(_raw_syscall("open_tree", ctypes.c_int(dirfd), _path(path), ctypes.c_uint(flags)), "open_tree",
                  path or None)


def move_mount(from_fd: int, from_path: str, to_fd: int, to_path: str, flags: int) -> None:
    """Attach a mount (here: a detached one, by fd) onto a target (here: an O_PATH fd): no path is resolved."""
    _check(_raw_syscall("move_mount", ctypes.c_int(from_fd), _path(from_path), ctypes.c_int(to_fd), _path(to_path),
                        ctypes.c_uint(flags)), "move_mount", to_path or None)


def fsopen(fstype: str, flags: int = FSOPEN_CLOEXEC) -> int:
    return _check(_raw_syscall("fsopen", _path(fstype), ctypes.c_uint(flags)), "fsopen", fstype)


def fsconfig(fs_fd: int, cmd: int, key: str | None = None, value: str | None = None) -> None:
    _check(_raw_syscall("fsconfig", ctypes.c_int(fs_fd), ctypes.c_uint(cmd), _path(key), _path(value),
                        ctypes.c_int(0)), "fsconfig", key)


def fsmount(fs_fd: int, flags: int = FSMOUNT_CLOEXEC, attr: int = 0) -> int:
    """A new mount of a configured filesystem context, attached nowhere (reachable only through the fd)."""
    return _check(_raw_syscall("fsmount", ctypes.c_int(fs_fd), ctypes.c_uint(flags), ctypes.c_uint(attr)),
                  "fsmount")


def fstatfs_type(fd: int) -> int:
    """The filesystem magic (statfs f_type) of what fd refers to (O_PATH fds too)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit; f_type comes first
    _check(_libc().fstatfs(ctypes.c_int(fd), buf), "fstatfs")
    return int(struct.unpack_from("=l", buf, 0)[0]) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------- paths


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2); `flags` should include O_CLOEXEC (the kernel does not add it)."""
    how = _OpenHow(flags, mode, resolve)
    result = _raw_syscall("openat2", ctypes.c_int(dirfd), _path(path), ctypes.byref(how),
                          ctypes.c_size_t(ctypes.sizeof(how)))
    return _check(result, "openat2", path)


def close_range(first: int, last: int, flags: int = 0) -> None:
    _check(_raw_syscall("close_range", ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(flags)),
           "close_range")


# ---------------------------------------------------------------------------------------------- processes


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    fn = _libc().prctl
    result = fn(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4),
                ctypes.c_ulong(arg5))
    return _check(int(result), f"prctl({option})")


def setgroups(gids: Sequence[int]) -> None:
    array = (ctypes.c_uint * max(len(gids), 1))(*gids)
    _check(_libc().setgroups(ctypes.c_size_t(len(gids)), array), "setgroups")


def setresgid(rgid: int, egid: int, sgid: int) -> None:
    _check(_libc().setresgid(ctypes.c_uint(rgid), ctypes.c_uint(egid), ctypes.c_uint(sgid)), "setresgid")


def setresuid(ruid: int, euid: int, suid: int) -> None:
    _check(_libc().setresuid(ctypes.c_uint(ruid), ctypes.c_uint(euid), ctypes.c_uint(suid)), "setresuid")


# ---------------------------------------------------------------------------------------------- capabilities


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def capget(pid: int = 0) -> tuple[int, int, int]:
    """(effective, permitted, inheritable) as 64-bit masks."""
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, pid)
    data = (_CapData * 2)()
    _check(_libc().capget(ctypes.byref(header), data), "capget")
    return (
        data[0].effective | data[1].effective << 32,
        data[0].permitted | data[1].permitted << 32,
        data[0].inheritable | data[1].inheritable << 32,
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc().capset(ctypes.byref(header), data), "capset")


# ---------------------------------------------------------------------------------------------- the seam


class Syscalls:
    """The calls the executor's setup code makes, as methods: tests subclass it to record instead of call."""

    def unshare(self, flags: int) -> None:
        unshare(flags)

    def setns(self, fd: int, nstype: int) -> None:
        setns(fd, nstype)

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int,
              data: str | None = None) -> None:
        mount(source, target, fstype, flags, data)

    def umount2(self, target: str, flags: int) -> None:
        umount2(target, flags)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        pivot_root(new_root, put_old)

    def mount_setattr(self, dirfd: int, path: str, flags: int, attr_set: int = 0, attr_clr: int = 0,
                      propagation: int = 0) -> None:
        mount_setattr(dirfd, path, flags, attr_set, attr_clr, propagation)

    def openat2(self, dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
        return openat2(dirfd, path, flags, mode, resolve)

    def open_tree(self, dirfd: int, path: str, flags: int) -> int:
        return open_tree(dirfd, path, flags)

    def move_mount(self, from_fd: int, from_path: str, to_fd: int, to_path: str, flags: int) -> None:
        move_mount(from_fd, from_path, to_fd, to_path, flags)

    def fsopen(self, fstype: str, flags: int = FSOPEN_CLOEXEC) -> int:
        return fsopen(fstype, flags)

    def fsconfig(self, fs_fd: int, cmd: int, key: str | None = None, value: str | None = None) -> None:
        fsconfig(fs_fd, cmd, key, value)

    def fsmount(self, fs_fd: int, flags: int = FSMOUNT_CLOEXEC, attr: int = 0) -> int:
        return fsmount(fs_fd, flags, attr)

    def sethostname(self, name: str) -> None:
        sethostname(name)

    def setdomainname(self, name: str) -> None:
        setdomainname(name)

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        return prctl(option, arg2, arg3, arg4, arg5)

    def capget(self) -> tuple[int, int, int]:
        return capget()

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        capset(effective, permitted, inheritable)

    def setgroups(self, gids: Sequence[int]) -> None:
        setgroups(gids)

    def setresgid(self, rgid: int, egid: int, sgid: int) -> None:
        setresgid(rgid, egid, sgid)

    def setresuid(self, ruid: int, euid: int, suid: int) -> None:
        setresuid(ruid, euid, suid)

    def mknod(self, path: str, mode: int, device: int, dir_fd: int) -> None:
        os.mknod(path, mode, device, dir_fd=dir_fd)
