"""The kernel features containers need: overlayfs, the cgroup device filter (eBPF), seccomp, user namespaces and
id-mapped mounts. Every probe is read-only (the BPF program is loaded, never attached)."""

from __future__ import annotations

import os
from pathlib import Path

from cri.doctor.report import Check, fail, ok, warn
from runtime import errors
from runtime.cgroups import DEFAULT_RULES, ebpf
from runtime.linux import syscalls
from runtime.linux.syscalls import libseccomp


def _filesystems() -> set[str]:
    try:
        return {line.split()[-1] for line in Path("/proc/filesystems").read_text().splitlines() if line.strip()}
    except OSError:
        return set()


def check_overlayfs() -> Check:
    if "overlay" in _filesystems():
        return ok("overlayfs", "the kernel has overlay (image layers become a container's root)")
    module = Path("/lib/modules", os.uname().release, "kernel/fs/overlayfs")
    if module.exists():
        return ok("overlayfs", "overlay is a module, loaded at the first mount")
    return fail("overlayfs", "the kernel has no overlay file system: no container can get its image as root",
                "load it (modprobe overlay) or use a kernel with CONFIG_OVERLAY_FS")


def check_device_filter() -> Check:
    try:
        fd = ebpf.load_program(ebpf.build_program(DEFAULT_RULES))
    except (errors.CrispError, OSError) as exc:
        return fail("device filter", f"cannot load a cgroup device program (eBPF): {exc}; every container gets "
                    "one", "a kernel with CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF, and crispd with CAP_SYS_ADMIN")
    os.close(fd)
    return ok("device filter", "cgroup v2 device programs (eBPF) load")


def check_seccomp() -> Check:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    if "Seccomp:" not in status:
        return warn("seccomp", "the kernel has no seccomp: containers with a seccomp profile (RuntimeDefault) fail",
                    "a kernel with CONFIG_SECCOMP_FILTER")
    try:
        libseccomp.seccomp_syscall_number("read")
    except OSError as exc:
        return warn("seccomp", f"libseccomp cannot be loaded ({exc}): the built-in executor fails containers with "
                    "a seccomp profile", "apt-get install libseccomp2")
    return ok("seccomp", "seccomp filters and libseccomp")


def check_user_namespaces() -> Check:
    try:
        limit = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    except (OSError, ValueError):
        limit = 0
    if limit <= 0:
        return warn("user namespaces", "user namespaces are off (user.max_user_namespaces = 0): pods with "
                    "hostUsers: false cannot run under runc or crun", "sysctl -w user.max_user_namespaces=15000")
    mapped = "and id-mapped mounts (mount_setattr)" if syscalls.has_mount_setattr() else \
        "but no id-mapped mounts (kernel before 5.12)"
    return ok("user namespaces", f"up to {limit}, {mapped}; the built-in executor refuses user-namespaced pods, "
              "runc and crun run them")


def check_kernel() -> list[Check]:
    return [check_overlayfs(), check_device_filter(), check_seccomp(), check_user_namespaces()]
