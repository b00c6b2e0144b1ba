"""What the spec builder needs to know about the host, gathered before the (pure) builder runs.

`NodeFacts.probe()` reads what does not change while crispd runs (its capabilities, oom_score_adj, RLIMIT_NOFILE,
hostname, architecture, cgroup mode): once, at start. `inspect_host()` looks at the paths one CreateContainer
names (bind-mount sources and their propagation, devices, a Localhost seccomp profile, all of /dev for a
privileged container): per request, in a worker thread, because it touches the filesystem. Neither changes
anything on the host. A path that cannot be used is recorded, not raised: the builder decides whether it is
needed and turns the problem into a clear error (only a malformed request raises here).
"""

from __future__ import annotations

import errno
import os
import platform
import resource
import socket
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cri import api as cri
from cri.oci.capabilities import capabilities_from_mask
from cri.oci.seccomp import requested_seccomp

# Directories of /dev that are not device nodes to copy into a privileged container (as runc and containerd skip).
_SKIPPED_DEV_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})
MAX_SECCOMP_PROFILE_BYTES = 4 << 20


@dataclass(frozen=True)
class NodeFacts:
    """crispd's own situation on this node."""

    # crispd's effective capabilities: the most a container can get
    capabilities: tuple[str, ...]
    # crispd's oom_score_adj (a container's cannot go below it without CAP_SYS_RESOURCE)
    oom_score_adj: int = 0
    # RLIMIT_NOFILE (soft, hard) crispd runs with; containers inherit it unless the config says otherwise
    nofile: tuple[int, int] = (1024, 1024)
    # the node's hostname (the HOSTNAME env of a pod without a hostname)
    hostname: str = "localhost"
    # uname machine (x86_64, aarch64, ...): picks seccomp architectures and arch-specific syscalls
    arch: str = "x86_64"
    # the kernel has cgroup namespaces (Linux 4.6+): unprivileged containers get one, hybrid host or not
    cgroup_namespaces: bool = True

    @property
    def has_sys_resource(self) -> bool:
        return "CAP_SYS_RESOURCE" in self.capabilities

    @classmethod
    def probe(cls, proc: str = "/proc") -> NodeFacts:
        cap_eff = 0
        with open(os.path.join(proc, "self/status")) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    cap_eff = int(line.split()[1], 16)
        with open(os.path.join(proc, "self/oom_score_adj")) as f:
            oom = int(f.read().strip())
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return cls(
            capabilities=capabilities_from_mask(cap_eff),
            oom_score_adj=oom,
            nofile=(_rlimit_value(soft), _rlimit_value(hard)),
            hostname=socket.gethostname(),
            arch=platform.machine(),
            cgroup_namespaces=os.path.exists(os.path.join(proc, "self/ns/cgroup")),
        )


def _rlimit_value(value: int) -> int:
    # RLIM_INFINITY is -1 in Python; the OCI spec wants the kernel's unsigned value
    return 2**64 - 1 if value == resource.RLIM_INFINITY else value


# ---------------------------------------------------------------------------------------------- mountinfo


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    optional: tuple[str, ...]
    fs_type: str

    @property
    def propagation(self) -> str:
        """`shared`, `slave` or `private` (a mount both shared and a slave counts as shared)."""
        if any(o.startswith("shared:") for o in self.optional):
            return "shared"
        if any(o.startswith("master:") for o in self.optional):
            return "slave"
        return "private"


def _unescape(field_text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field_text):
        octal = field_text[i + 1 : i + 4]
        if field_text[i] == "\\" and len(octal) == 3 and octal.isdigit():
            out.append(chr(int(octal, 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    entries = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            if "-" not in fields:
                continue
            sep = fields.index("-")
            entries.append(
                MountEntry(
                    mount_point=_unescape(fields[4]),
                    optional=tuple(fields[6:sep]),
                    fs_type=fields[sep + 1] if len(fields) > sep + 1 else "",
                )
            )
    return entries


def mount_containing(path: str, entries: Iterable[MountEntry]) -> MountEntry | None:
    """The mount a (resolved, absolute) path lives on: the longest mount point that prefixes it, the last one
    mounted when several share it."""
    best: MountEntry | None = None
    for entry in entries:
        mp = entry.mount_point
        if path == mp or mp == "/" or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best.mount_point):
                best = entry
    return best


# ---------------------------------------------------------------------------------------------- per request


@dataclass(frozen=True)
class MountSource:
    """A bind-mount source as CreateContainer found it."""

    host_path: str
    # with symlinks resolved; "" when it cannot be used (see error)
    resolved: str = ""
    # propagation of the mount the resolved path lives on: shared, slave or private
    propagation: str = "private"
    error: str = ""


@dataclass(frozen=True)
class DeviceNode:
    """A device node on the host (what `stat` says about it)."""

    path: str
    type: str  # "c" or "b"
    major: int
    minor: int
    file_mode: int  # permission bits
    uid: int
    gid: int


@dataclass(frozen=True)
class DeviceLookup:
    """The device node(s) behind a CRI device's host path (a directory yields every device under it)."""

    host_path: str
    # host_path with symlinks resolved; nodes' paths start with it
    resolved: str = ""
    nodes: tuple[DeviceNode, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class ProfileFile:
    """A Localhost seccomp profile as read from the node."""

    path: str
    data: bytes | None = None
    error: str = ""


@dataclass(frozen=True)
class HostPaths:
    """Everything on the host one CreateContainer refers to, keyed by the path the request names."""

    mounts: Mapping[str, MountSource] = field(default_factory=dict)
    devices: Mapping[str, DeviceLookup] = field(default_factory=dict)
    # every device under /dev, for a privileged container (empty otherwise)
    host_devices: tuple[DeviceNode, ...] = ()
    seccomp_profiles: Mapping[str, ProfileFile] = field(default_factory=dict)


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


def device_node(path: str) -> DeviceNode | None:
    """The device at path (not following a final symlink), or None when it is not a char/block device."""
    st = os.lstat(path)
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        return None
    return DeviceNode(
        path=path,
        type=kind,
        major=os.major(st.st_rdev),
        minor=os.minor(st.st_rdev),
        file_mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
    )


def devices_under(directory: str) -> list[DeviceNode]:
    """Every char/block device below a directory (the /dev of a privileged container), sorted by path."""
    out: list[DeviceNode] = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return out
    for name in names:
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue  # vanished
        if stat.S_ISDIR(st.st_mode):
            if name not in _SKIPPED_DEV_DIRS:
                out.extend(devices_under(path))
            continue
        if name == "console":
            continue  # the executor provides the container's own console
        node = device_node(path)
        if node is not None:
            out.append(node)
    return out


def lookup_mount_source(host_path: str, mounts: list[MountEntry]) -> MountSource:
    if not host_path or not os.path.isabs(host_path):
        return MountSource(host_path, error="host_path must be an absolute path")
    try:
        resolved = os.path.realpath(host_path, strict=True)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return MountSource(host_path, error="does not exist")
        return MountSource(host_path, error=_describe(exc))
    entry = mount_containing(resolved, mounts)
    return MountSource(host_path, resolved, entry.propagation if entry is not None else "private")


def lookup_device(host_path: str) -> DeviceLookup:
    if not host_path or not os.path.isabs(host_path):
        return DeviceLookup(host_path, error="host_path must be an absolute path")
    try:
        resolved = os.path.realpath(host_path, strict=True)
        if os.path.isdir(resolved):
            nodes = tuple(devices_under(resolved))
            if not nodes:
                return DeviceLookup(host_path, resolved, error="is a directory without device nodes")
            return DeviceLookup(host_path, resolved, nodes)
        node = device_node(resolved)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return DeviceLookup(host_path, error="does not exist")
        return DeviceLookup(host_path, error=_describe(exc))
    if node is None:
        return DeviceLookup(host_path, resolved, error="is not a device node")
    return DeviceLookup(host_path, resolved, (node,))


def read_profile(path: str) -> ProfileFile:
    if not os.path.isabs(path):
        return ProfileFile(path, error="a Localhost seccomp profile must be an absolute path")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECCOMP_PROFILE_BYTES + 1)
    except OSError as exc:
        return ProfileFile(path, error=_describe(exc))
    if len(data) > MAX_SECCOMP_PROFILE_BYTES:
        return ProfileFile(path, error=f"larger than {MAX_SECCOMP_PROFILE_BYTES} bytes")
    return ProfileFile(path, data)


def inspect_host(
    config: cri.ContainerConfig,
    *,
    privileged: bool,
    dev_dir: str = "/dev",
    mountinfo: str = "/proc/self/mountinfo",
) -> HostPaths:
    """Look at every host path a ContainerConfig names. Blocking: call it from a worker thread."""
    mounts: dict[str, MountSource] = {}
    if config.mounts:
        entries = parse_mountinfo(mountinfo)
        for m in config.mounts:
            if m.host_path and m.host_path not in mounts:
                mounts[m.host_path] = lookup_mount_source(m.host_path, entries)
    devices = {d.host_path: lookup_device(d.host_path) for d in config.devices}
    profiles: dict[str, ProfileFile] = {}
    if not privileged:  # a privileged container never gets a filter
        request = requested_seccomp(config.linux.security_context)
        if request.kind == "localhost":
            profiles[request.path] = read_profile(request.path)
    host_devices = tuple(devices_under(dev_dir)) if privileged else ()
    return HostPaths(mounts=mounts, devices=devices, host_devices=host_devices, seccomp_profiles=profiles)
