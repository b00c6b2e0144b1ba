"""cgroup path strings: crisp's layout and the systemd slice-name form.

Layout (cgroupfs paths, relative to the cgroup2 mount, always starting with "/"):
- the kubelet's `cgroup_parent` IS the pod cgroup (`/kubepods/burstable/pod<uid>`); a pod without one (crictl,
  critest) gets `<base>/pod<uid>`, made by crisp, with `base` from config (`cgroup.base`, default `/crisp`);
- a container goes to `<pod cgroup>/crisp-<container id>`; a pod's init process (a shared PID namespace) gets its
  own leaf the same way (`<pod cgroup>/crisp-<sandbox id>`), because cgroup v2 puts no process in a cgroup that
  has children.

Where cgroup v2 is mounted is read from /proc/self/mountinfo (`find_cgroup2_mount`), never assumed: on a hybrid
host it is /sys/fs/cgroup/unified, and an OCI runtime (runc, crun) that looks only at /sys/fs/cgroup is given the
cgroup2 mount bound there (`oci_runtime_bind`).

A kubelet running with the systemd cgroup driver passes slice names (`kubepods-burstable-pod<uid>.slice`);
`resolve_parent` expands those to their cgroupfs path (`/kubepods.slice/kubepods-burstable.slice/...`), as systemd
lays them out (the dash rule, `expand_slice`).

With crisp's systemd driver every cgroup crisp makes is a systemd unit (crispd starts it over D-Bus), named so that
its cgroup is where the rules below put it:
- a pod without `cgroup_parent` gets the slice `crisp-pod<uid>.slice` (dashes of the uid as "_", as the kubelet
  escapes them) under `crisp.slice`: `/crisp.slice/crisp-pod<uid>.slice`;
- a container (and a pod's init) gets the scope `crisp-<id>.scope` in its pod's slice; the OCI form of its path is
  `<pod slice>:crisp:<id>` (`systemd_cgroups_path`), which runc and crun turn into the same scope;
- a shim gets the scope `crisp-shim-<id>.scope` in `system.slice` (outside crispd.service: a stop or restart of
  crispd never reaches it).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from runtime import errors

DEFAULT_BASE = "/crisp"
CONTAINER_PREFIX = "crisp-"
SYSTEMD_SLICE = "crisp.slice"  # the systemd driver's parent of the pod slices crisp makes
SCOPE_PREFIX = "crisp"  # the prefix of the OCI systemd form: units crisp-<id>.scope
SHIM_SLICE = "system.slice"
SYS_FS_CGROUP = "/sys/fs/cgroup"
# where a cgroup2 mount is usually found, best first: a pure v2 host, then a hybrid one
_PREFERRED = (SYS_FS_CGROUP, "/sys/fs/cgroup/unified")

_COMPONENT = re.compile(r"^[A-Za-z0-9_.:@=+-]+$")
_POD_UID = re.compile(r"^[A-Za-z0-9_-]+$")


def normalize(path: str) -> str:
    """A cgroup path relative to the mount as "/a/b" ("" and "/" are the root); bad components are refused."""
    if not isinstance(path, str) or "\0" in path:
        raise errors.InvalidArgument(f"bad cgroup path {path!r}")
    parts = [p for p in path.split("/") if p]
    for part in parts:
        if part in (".", "..") or not _COMPONENT.match(part) or part.startswith("cgroup."):
            raise errors.InvalidArgument(f"bad cgroup path {path!r}: component {part!r}")
    return "/" + "/".join(parts)


def join(parent: str, name: str) -> str:
    return normalize(f"{normalize(parent)}/{name}")


def expand_slice(name: str) -> str:
    """systemd's slice naming: `a-b-c.slice` lives at `/a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root."""
    if name == "-.slice":
        return "/"
    if not name.endswith(".slice") or "/" in name:
        raise errors.InvalidArgument(f"{name!r} is not a systemd slice name")
    stem = name[: -len(".slice")]
    if not stem or stem.startswith("-") or stem.endswith("-") or "--" in stem:
        raise errors.InvalidArgument(f"{name!r} is not a valid systemd slice name")
    parts = stem.split("-")
    return normalize("/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts))))


def resolve_parent(cgroup_parent: str) -> str:
    """The CRI `cgroup_parent` as a cgroupfs path: a systemd slice name is expanded, a path normalized."""
    if cgroup_parent.endswith(".slice") and "/" not in cgroup_parent:
        return expand_slice(cgroup_parent)
    return normalize(cgroup_parent)


def pod_cgroup_path(cgroup_parent: str, pod_uid: str, base: str = DEFAULT_BASE) -> str:
    """The pod cgroup: the kubelet's `cgroup_parent` when given, else `<base>/pod<uid>` (which crisp makes)."""
    if cgroup_parent:
        return resolve_parent(cgroup_parent)
    if not _POD_UID.match(pod_uid):
        raise errors.InvalidArgument(f"bad pod uid {pod_uid!r} for a cgroup name")
    return join(base, f"pod{pod_uid}")


def pod_slice_name(pod_uid: str) -> str:
    """The slice of a pod crisp makes itself under the systemd driver: `crisp-pod<uid>.slice` (a dash is systemd's
    separator of levels, so the uid's dashes become "_", as the kubelet does)."""
    if not _POD_UID.match(pod_uid):
        raise errors.InvalidArgument(f"bad pod uid {pod_uid!r} for a slice name")
    return f"{SYSTEMD_SLICE.removesuffix('.slice')}-pod{pod_uid.replace('-', '_')}.slice"


def systemd_pod_cgroup_path(cgroup_parent: str, pod_uid: str) -> str:
    """The pod cgroup under the systemd driver: the kubelet's slice when given, as a slice name or as the path of
    one (the kubelet sends `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`); a path
    that is not a slice's as systemd lays them out is refused (a kubelet with the cgroupfs driver talking to a
    runtime with the systemd driver). Without one, crisp's own pod slice."""
    if not cgroup_parent:
        return expand_slice(pod_slice_name(pod_uid))
    last = cgroup_parent.rstrip("/").rsplit("/", 1)[-1]
    if last.endswith(".slice") and ("/" not in cgroup_parent.rstrip("/")
                                    or normalize(cgroup_parent) == expand_slice(last)):
        return expand_slice(last)
    raise errors.InvalidArgument(
        f"cgroup parent {cgroup_parent!r} is not a systemd slice: crisp runs with the systemd cgroup driver "
        "(the kubelet's cgroupDriver must be systemd too)")


def slice_of(pod_cgroup: str) -> str:
    """The slice a pod cgroup path ends in (`/a.slice/a-b.slice` -> `a-b.slice`)."""
    name = normalize(pod_cgroup).rsplit("/", 1)[-1]
    if not name.endswith(".slice"):
        raise errors.InvalidArgument(f"cgroup {pod_cgroup} is not a systemd slice")
    return name


def scope_name(container_id: str) -> str:
    """The scope of a container (or of a pod's init) under the systemd driver."""
    if not _POD_UID.match(container_id):
        raise errors.InvalidArgument(f"bad container id {container_id!r} for a unit name")
    return f"{SCOPE_PREFIX}-{container_id}.scope"


def shim_scope_name(container_id: str) -> str:
    """The scope a container's shim lives in under the systemd driver."""
    if not _POD_UID.match(container_id):
        raise errors.InvalidArgument(f"bad container id {container_id!r} for a unit name")
    return f"{SCOPE_PREFIX}-shim-{container_id}.scope"


def systemd_cgroups_path(pod_cgroup: str, container_id: str) -> str:
    """The OCI `linux.cgroupsPath` of a container under the systemd driver: `<pod slice>:crisp:<id>`."""
    scope_name(container_id)  # checks the id
    return f"{slice_of(pod_cgroup)}:{SCOPE_PREFIX}:{container_id}"


def unit_of(path: str) -> str:
    """The systemd unit a cgroup path of the systemd layout belongs to: its last component."""
    name = normalize(path).rsplit("/", 1)[-1]
    if not name.endswith((".slice", ".scope", ".service")):
        raise errors.InvalidArgument(f"cgroup {path} is not a systemd unit's")
    return name


def container_cgroup_path(pod_cgroup: str, container_id: str, systemd: bool = False) -> str:
    """`<pod cgroup>/crisp-<id>`: the cgroup of one container (or of a pod's init); with the systemd driver its
    scope, `<pod cgroup>/crisp-<id>.scope`."""
    if systemd:
        return join(pod_cgroup, scope_name(container_id))
    if not _POD_UID.match(container_id):
        raise errors.InvalidArgument(f"bad container id {container_id!r} for a cgroup name")
    return join(pod_cgroup, CONTAINER_PREFIX + container_id)


@dataclass(frozen=True)
class Layout:
    """Where crisp's cgroups go under one cgroup driver (`[cgroup] driver`): directories under `base` (cgroupfs), or
    systemd's units (systemd; the module's doc)."""

    systemd: bool = False
    base: str = DEFAULT_BASE

    def pod(self, cgroup_parent: str, pod_uid: str) -> str:
        """The pod cgroup (InvalidArgument for a parent the driver cannot use)."""
        if self.systemd:
            return systemd_pod_cgroup_path(cgroup_parent, pod_uid)
        return pod_cgroup_path(cgroup_parent, pod_uid, self.base)

    def leaf(self, pod_cgroup: str, leaf_id: str) -> str:
        """The cgroup of a container or of a pod's init."""
        return container_cgroup_path(pod_cgroup, leaf_id, systemd=self.systemd)

    def oci(self, pod_cgroup: str, container_id: str) -> str:
        """A container's `linux.cgroupsPath`: its cgroupfs path, or systemd's `<pod slice>:crisp:<id>` (which
        `from_oci` reads back as `leaf`)."""
        if self.systemd:
            return systemd_cgroups_path(pod_cgroup, container_id)
        return self.leaf(pod_cgroup, container_id)

    def crisps_pod_slice(self, pod_cgroup: str) -> bool:
        """systemd: whether a pod cgroup is a slice crisp makes (under crisp.slice) rather than the kubelet's."""
        return self.systemd and parent(pod_cgroup) == expand_slice(SYSTEMD_SLICE)


def from_oci(cgroups_path: str) -> str:
    """An OCI `linux.cgroupsPath` as a cgroupfs path: a cgroupfs path as is (relative paths are taken relative to
    the mount, like absolute ones), or the systemd form `slice:prefix:name` as `<slice path>/<prefix>-<name>.scope`
    (what runc's systemd driver would name the scope)."""
    if cgroups_path.count(":") == 2 and "/" not in cgroups_path:
        slice_name, prefix, name = cgroups_path.split(":")
        parent = expand_slice(slice_name or "system.slice")
        return join(parent, f"{prefix}-{name}.scope" if prefix else f"{name}.scope")
    return normalize(cgroups_path)


def parent(path: str) -> str:
    """The parent of a normalized cgroup path ("/" for a top-level cgroup and for the root)."""
    head = normalize(path).rsplit("/", 1)[0]
    return head or "/"


# ---------------------------------------------------------------------------------------------- the mount


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def cgroup2_mounts(mountinfo: str) -> list[Path]:
    """The mount points of every cgroup2 filesystem in a /proc/<pid>/mountinfo text, in order."""
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        if len(fields) >= 5 and right.split()[:1] == ["cgroup2"]:
            found.append(Path(_unescape(fields[4])))
    return found


def find_cgroup2_mount(mountinfo: str) -> Path:
    """The cgroup2 mount crisp uses: /sys/fs/cgroup, else /sys/fs/cgroup/unified, else the first one."""
    mounts = cgroup2_mounts(mountinfo)
    if not mounts:
        raise errors.FailedPrecondition("no cgroup2 filesystem is mounted (crisp needs cgroup v2)")
    for preferred in _PREFERRED:
        if Path(preferred) in mounts:
            return Path(preferred)
    return mounts[0]


def oci_runtime_bind(cgroup2_mount: str | Path) -> str:
    """For runc/crun: the cgroup2 mount to bind on /sys/fs/cgroup ('' when it is there already, a pure v2 host).

    An OCI runtime looks at /sys/fs/cgroup only; on a hybrid host it would use (and write into) the host's v1
    hierarchies. crisp is cgroup v2 only, so the shim runs such a runtime with cgroup v2 bound there.
    """
    mount = str(cgroup2_mount)
    if not mount or posixpath.normpath(mount) == SYS_FS_CGROUP:
        return ""
    return mount
