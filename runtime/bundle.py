"""The OCI bundle contract between crispd and the layers below it, in code (docs/contracts.md says it in words).

crispd (cri/oci) writes a bundle: `config.json`, an OCI runtime-spec document whose `root.path` is the rootfs
mount point, and, when the rootfs is an overlay of image snapshots, the annotation `io.crisp.rootfs.overlay`. The
shim reads it to mount that overlay for an OCI runtime (runc, crun), to run the executor with runc's command line,
and to derive an exec's process; the built-in executor reads it to mount the overlay itself. Every one of them
uses this module, so the three agree by construction. Standard library only: the shim and the executor import it.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime import errors

CONFIG_NAME = "config.json"
ROOTFS_NAME = "rootfs"            # root.path when the spec names none
EXECUTOR_LOG = "executor.log"     # the executor's --log, JSON lines, in the bundle dir
# JSON {"lowerdirs": [topmost, ..., bottom], "upperdir": ..., "workdir": ...}
OVERLAY_ANNOTATION = "io.crisp.rootfs.overlay"
# mount(2) takes one page of options; kept below it (util-linux adds nothing, but leave room)
MOUNT_DATA_MAX = 4000
TERM = "TERM=xterm"               # the terminal type of a tty that names none (as containerd and dockershim)


# ---------------------------------------------------------------------------------------------- the rootfs


@dataclass(frozen=True)
class Overlay:
    """The container's rootfs as an overlay of image snapshots, mounted on root.path by the executor (built-in)
    or by the shim (OCI runtimes). Without upperdir/workdir it is read-only."""

    lowerdirs: tuple[str, ...]  # topmost first
    upperdir: str = ""
    workdir: str = ""

    def annotation(self) -> str:
        return json.dumps({"lowerdirs": list(self.lowerdirs), "upperdir": self.upperdir, "workdir": self.workdir})

    def mount_data(self) -> tuple[str, str | None]:
        """The overlay's mount options, and the directory to run the mount in when the absolute paths do not fit
        one page: then the lower dirs are named relative to their common parent (overlayfs resolves them when
        mounting, against the caller's cwd)."""
        full = _mount_data(self.lowerdirs, self.upperdir, self.workdir)
        if len(full) < MOUNT_DATA_MAX:
            return full, None
        base = posixpath.commonpath(self.lowerdirs)
        if len(self.lowerdirs) == 1:
            base = posixpath.dirname(base)
        short = _mount_data(tuple(posixpath.relpath(p, base) for p in self.lowerdirs), self.upperdir, self.workdir)
        if len(short) >= MOUNT_DATA_MAX:
            raise errors.InvalidArgument(f"{len(self.lowerdirs)} image layers do not fit in one overlay mount")
        return short, base


def _mount_data(lowers: Iterable[str], upper: str, work: str) -> str:
    data = "lowerdir=" + ":".join(lowers)
    if upper:
        data += f",upperdir={upper},workdir={work}"
    return data


def _absolute(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise errors.InvalidArgument(f"{where}: {value!r} is not an absolute path")
    return value


def _overlay_path(value: object, where: str) -> str:
    value = _absolute(value, where)
    if any(c in value for c in ",:\n"):
        raise errors.InvalidArgument(f"{where}: {value!r}: overlay paths must not contain ',', ':' or newlines")
    return value


def _json_annotation(annotations: object, key: str, list_field: str, need: str) -> dict[str, Any] | None:
    """One annotation's JSON object, which must hold a list at `list_field`; None when absent. InvalidArgument
    naming it (and saying what it needs) when it is not that."""
    raw = annotations.get(key) if isinstance(annotations, Mapping) else None
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise errors.InvalidArgument(f"annotations.{key}: not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get(list_field), list):
        raise errors.InvalidArgument(f"annotations.{key}: {need}")
    return data


def overlay_of(annotations: object) -> Overlay | None:
    """The overlay a spec's annotations ask for (None: the rootfs is root.path as it is). InvalidArgument,
    naming the field, when the annotation is malformed."""
    data = _json_annotation(annotations, OVERLAY_ANNOTATION, "lowerdirs", "needs a list of lowerdirs")
    if data is None:
        return None
    where = f"annotations.{OVERLAY_ANNOTATION}"
    lowers = tuple(_overlay_path(p, f"{where}.lowerdirs[{i}]") for i, p in enumerate(data["lowerdirs"]))
    if not lowers:
        raise errors.InvalidArgument(f"{where}: an overlay needs at least one lower dir")
    upper = _overlay_path(data["upperdir"], f"{where}.upperdir") if data.get("upperdir") else ""
    work = _overlay_path(data["workdir"], f"{where}.workdir") if data.get("workdir") else ""
    if bool(upper) != bool(work):
        raise errors.InvalidArgument(f"{where}: upperdir and workdir go together")
    return Overlay(lowers, upper, work)


# ---------------------------------------------------------------------------------------------- id-mapped mounts

# JSON {"userns": path, "mounts": [{"target": path, "source": path} | {"target": path, "lowerdirs": [...]}]}
IDMAP_ANNOTATION = "io.crisp.idmap"
IDMAP_DIR = "idmap"               # <bundle>/idmap/<n>: where the staged mounts go


@dataclass(frozen=True)
class StagedMount:
    """One mount staged under `<bundle>/idmap` before the container's own: an id-mapped bind of `source`, or a
    read-only overlay of `lowerdirs` (topmost first; themselves staged before it)."""

    target: str
    source: str = ""
    lowerdirs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Idmap:
    """A container in a pod's user namespace (`userns`, a pinned namespace file) sees its rootfs and volumes through
    id-mapped mounts. The spec already names the staged targets (the overlay's lower dirs, the bind sources);
    whoever mounts the rootfs stages `mounts` in order first, in the same mount namespace: the shim in the host's
    for an OCI runtime, the built-in executor in the container's before it joins the user namespace."""

    userns: str
    mounts: tuple[StagedMount, ...] = ()

    def annotation(self) -> str:
        return json.dumps({"userns": self.userns, "mounts": [
            {"target": m.target, "source": m.source} if m.source else
            {"target": m.target, "lowerdirs": list(m.lowerdirs)} for m in self.mounts]})


def staged_path(bundle: str, index: int) -> str:
    return posixpath.join(bundle, IDMAP_DIR, str(index))


def idmap_of(annotations: object) -> Idmap | None:
    """The id-mapped mounts a spec's annotations ask for (None: none); InvalidArgument when malformed."""
    data = _json_annotation(annotations, IDMAP_ANNOTATION, "mounts", "needs a userns and a list of mounts")
    if data is None:
        return None
    where = f"annotations.{IDMAP_ANNOTATION}"
    userns = _absolute(data.get("userns"), f"{where}.userns")
    mounts = []
    for i, m in enumerate(data["mounts"]):
        w = f"{where}.mounts[{i}]"
        if not isinstance(m, dict):
            raise errors.InvalidArgument(f"{w}: not an object")
        target = _overlay_path(m.get("target"), f"{w}.target")
        if "source" in m:
            mounts.append(StagedMount(target, source=_absolute(m["source"], f"{w}.source")))
            continue
        lowers = m.get("lowerdirs")
        if not isinstance(lowers, list) or len(lowers) < 2:
            raise errors.InvalidArgument(f"{w}: needs a source or at least two lowerdirs")
        mounts.append(StagedMount(target, lowerdirs=tuple(_overlay_path(p, f"{w}.lowerdirs[{j}]")
                                                          for j, p in enumerate(lowers))))
    return Idmap(userns, tuple(mounts))


def rootfs_path(bundle: str, spec: Mapping[str, Any]) -> str:
    """root.path made absolute against the bundle dir (where the overlay is mounted)."""
    root = spec.get("root")
    path = root.get("path") if isinstance(root, Mapping) else None
    return posixpath.normpath(posixpath.join(bundle, str(path or ROOTFS_NAME)))


def read_json(path: str, what: str) -> dict[str, Any]:
    """A JSON object from a file of the contract (config.json, an exec's process, an update's resources): NotFound
    when it is missing, InvalidArgument (naming `what`) when it cannot be read or is not an object."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        raise errors.NotFound(f"{what}: no such file") from None
    except (OSError, ValueError) as exc:
        raise errors.InvalidArgument(f"{what}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise errors.InvalidArgument(f"{what}: not a JSON object")
    return data


def load_config(bundle: str) -> dict[str, Any]:
    """The bundle's config.json."""
    return read_json(os.path.join(bundle, CONFIG_NAME), f"bundle {bundle}: {CONFIG_NAME}")


def write_config(bundle: str, spec: Mapping[str, Any]) -> None:
    """The bundle's config.json, replaced whole (a reader never sees half of it)."""
    tmp = os.path.join(bundle, f".{CONFIG_NAME}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(spec))
    os.replace(tmp, os.path.join(bundle, CONFIG_NAME))


# ---------------------------------------------------------------------------------------------- mounts

# files under /proc a container may have something mounted on (lxcfs does this), as runc allows
PROC_MOUNT_ALLOWED = frozenset({
    "/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat", "/proc/swaps", "/proc/uptime",
    "/proc/loadavg", "/proc/slabinfo", "/proc/net/dev", "/proc/sys/kernel/ns_last_pid",
})


def mount_refused_in_proc(destination: str, fstype: str) -> bool:
    """runc's rule, for a destination as it lands in the container (symlinks followed): nothing but a procfs
    on /proc itself and a few files (lxcfs's) may be mounted at or below /proc. cri/oci refuses such a volume
    before the bundle is written; the executor checks every mount of a spec again where it lands."""
    dest = posixpath.normpath("/" + destination.lstrip("/"))
    if dest != "/proc" and not dest.startswith("/proc/"):
        return False
    return not ((dest == "/proc" and fstype == "proc") or dest in PROC_MOUNT_ALLOWED)


# ---------------------------------------------------------------------------------------------- processes


def merge_env(base: Sequence[str], overrides: Iterable[str]) -> list[str]:
    """Each `KEY=value` replaces the same key in place or is appended; a bare `KEY` removes it."""
    out = list(base)
    index = {e.partition("=")[0]: i for i, e in enumerate(out)}
    removed: set[int] = set()
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep:
            if key in index:
                removed.add(index.pop(key))
            continue
        if key in index:
            out[index[key]] = item
        else:
            index[key] = len(out)
            out.append(item)
    return [e for i, e in enumerate(out) if i not in removed]


def exec_process(container_process: Mapping[str, Any], args: Sequence[str], *, tty: bool, env: Sequence[str] = (),
                 cwd: str = "", console_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The process spec of an exec (`executor exec --process`): the container's process (same user, groups,
    capabilities, cwd, env, rlimits, oom_score_adj, no_new_privs: the container's identity) running `args`, with
    a terminal when `tty` (then TERM=xterm unless set, and the console size when known), and `env` entries
    (`KEY=value`) replacing or adding variables."""
    if not args or not all(isinstance(a, str) for a in args):
        raise errors.InvalidArgument("exec needs a non-empty list of arguments")
    process = copy.deepcopy(dict(container_process))
    process["args"] = list(args)
    process["terminal"] = tty
    process.pop("consoleSize", None)
    current = [str(e) for e in process.get("env") or []]
    if tty and not any(e.startswith("TERM=") for e in current):
        current.append(TERM)
    process["env"] = merge_env(current, [e for e in env if "=" in e])
    if tty and console_size is not None and console_size[0] > 0 and console_size[1] > 0:
        process["consoleSize"] = {"width": console_size[0], "height": console_size[1]}
    if cwd:
        process["cwd"] = cwd
    return process


# ---------------------------------------------------------------------------------------------- the executor


def executor_argv(executor: Sequence[str], root: str, *args: str, log: str = "", cgroup2_bind: str = ""
                  ) -> list[str]:
    """One executor command with runc's global options (`--root`, and `--log` in JSON when given); with
    `cgroup2_bind` it runs where that cgroup2 mount is bound on /sys/fs/cgroup (an OCI runtime on a hybrid host)."""
    argv = [*executor, "--root", root]
    if log:
        argv += ["--log", log, "--log-format", "json"]
    argv += args
    if cgroup2_bind:
        argv = with_cgroup2_at_sys_fs_cgroup(cgroup2_bind, argv)
    return argv


def with_cgroup2_at_sys_fs_cgroup(cgroup2_mount: str, argv: list[str]) -> list[str]:
    """argv run in a mount namespace of its own where the cgroup2 mount is bound on /sys/fs/cgroup (for an OCI
    runtime on a hybrid host). Only /sys is made private there: every other mount keeps its propagation, so
    host-to-container (rslave) and bidirectional (rshared) volume propagation still reach the containers the
    runtime makes from this namespace, while the bind itself never propagates back to the host."""
    script = 'mount --make-rprivate /sys && mount --bind "$0" /sys/fs/cgroup && exec "$@"'
    return ["unshare", "--mount", "--propagation", "unchanged", "--", "/bin/sh", "-c", script, cgroup2_mount, *argv]
