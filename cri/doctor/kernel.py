"""The kernel features containers need: overlayfs, the cgroup device filter (eBPF), seccomp, user namespaces and
id-mapped mounts (of crisp's dirs, and of tmpfs), and CRIU for checkpoints (`criu check`). Every probe is read-only
(the BPF program is loaded, never attached; an id-mapped mount is cloned in a throwaway user namespace, never
attached)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cri.doctor.report import Check, fail, ok, warn
from cri.handlers import idmapped_dirs
from runtime import errors
from runtime.cgroups import DEFAULT_RULES, ebpf
from runtime.checkpoint import criu
from runtime.linux import idmap, syscalls
from runtime.linux.syscalls import libseccomp

if TYPE_CHECKING:
    from cri.config import Config

USERNS_PODS = "pods with hostUsers: false"


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


def _existing(path: Path) -> Path:
    """`path`, or the nearest of its parents that exists (the doctor makes nothing)."""
    return next(p for p in (path, *path.parents) if p.exists())


def _a_tmpfs() -> str:
    """A tmpfs mount point of this host to probe (/dev/shm when it is one), "" when there is none."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return ""
    points = [point for point, fstype in mounts if fstype == "tmpfs"]
    return "/dev/shm" if "/dev/shm" in points else (points[0] if points else "")


def check_user_namespaces(config: Config) -> list[Check]:
    """User namespaces, and id-mapped mounts where a user-namespaced pod's files are (cri/handlers.py decides
    the same for Status's user_namespaces feature) and of tmpfs (the kubelet's secret and token volumes)."""
    try:
        limit = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    except (OSError, ValueError):
        limit = 0
    if limit <= 0:
        return [warn("user namespaces", f"user namespaces are off (user.max_user_namespaces = 0): {USERNS_PODS} "
                     "cannot run", "sysctl -w user.max_user_namespaces=15000")]
    if not syscalls.has_mount_setattr():
        return [warn("user namespaces", f"up to {limit}, but no id-mapped mounts (mount_setattr): {USERNS_PODS} "
                     "are refused", "a kernel of Linux 5.12 or later (6.3 or later for tmpfs volumes)")]
    dirs = sorted({_existing(d) for d in idmapped_dirs(Path(config.state), Path(config.root))})
    problems = [p for p in idmap.probe([str(d) for d in dirs]).values() if p]
    if problems:
        checks = [warn("user namespaces", f"up to {limit}, but id-mapped mounts fail where crisp keeps pods' files "
                       f"and image layers ({'; '.join(problems)}): crisp offers no user namespaces here (Status), "
                       f"{USERNS_PODS} are refused", "put crisp's root and state dirs on a filesystem that can be "
                       "id-mapped (ext4, xfs, btrfs; tmpfs from Linux 6.3)")]
    else:
        where = ", ".join(map(str, dirs))
        checks = [ok("user namespaces", f"up to {limit}; id-mapped mounts work where crisp keeps pods' files and "
                     f"image layers ({where}): the built-in executor and runc run {USERNS_PODS}")]
    return [*checks, check_tmpfs_idmap()]


def check_tmpfs_idmap() -> Check:
    """tmpfs can be id-mapped from Linux 6.3: a user-namespaced pod's volumes on tmpfs (the kubelet puts the service
    account token, secrets and emptyDir medium Memory there) are refused without it (CreateContainer)."""
    tmpfs = _a_tmpfs()
    release = os.uname().release
    if tmpfs:
        problem = idmap.probe([tmpfs])[tmpfs]
    else:  # nothing to probe: the kernel's version says it
        major, minor = (int(x) for x in release.split(".")[:2])
        problem = "" if (major, minor) >= (6, 3) else f"Linux {release}"
    what = "the kubelet's tmpfs volumes (service account token, secrets, emptyDir medium Memory)"
    if problem:
        return warn("tmpfs id-mapping", f"tmpfs cannot be id-mapped here ({problem}; Linux {release}, tmpfs "
                    f"supports it from 6.3): containers of {USERNS_PODS} with {what} are refused",
                    "a kernel of Linux 6.3 or later, or automountServiceAccountToken: false and no tmpfs volumes in "
                    "such pods")
    return ok("tmpfs id-mapping", f"tmpfs ({tmpfs or 'by the kernel version'}) can be id-mapped: {USERNS_PODS} "
              f"get {what}")


def check_checkpoint() -> Check:
    """CheckpointContainer (the kubelet's checkpoint API) needs CRIU, and CRIU's own check of this kernel."""
    problem = criu.problem()
    if problem:
        return warn("checkpoint", f"CheckpointContainer is refused (FAILED_PRECONDITION): {problem}",
                    "a criu that knows this kernel (Debian 12's criu 3.17 fails on the vDSO of kernels as new as "
                    "6.18; it works on Debian 12's 6.1); nothing else needs CRIU")
    return ok("checkpoint", "criu check passes: CheckpointContainer dumps running containers")


def check_kernel(config: Config) -> list[Check]:
    return [check_overlayfs(), check_device_filter(), check_seccomp(), *check_user_namespaces(config),
            check_checkpoint()]
