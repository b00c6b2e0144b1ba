"""The cgroup v2 manager: finds the cgroup2 mount, creates and opens cgroups, checks controllers.

Controllers are enabled (cgroup.subtree_control) only in cgroups crisp created and in the direct parent of a
cgroup crisp creates (the kubelet's pod cgroup, which the CRI hands to the runtime for its containers, as runc
does); never in any other ancestor and never at the root of the hierarchy.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from runtime import errors
from runtime.cgroups import fs, paths
from runtime.cgroups.cgroup import Cgroup, is_crisp_owned, mark_crisp_owned, missing_for
from runtime.cgroups.resources import MissingLimit

log = logging.getLogger(__name__)

MOUNTINFO = Path("/proc/self/mountinfo")


class CgroupManager(Protocol):
    """The seam crispd and the executor program use (a fake can stand in for it in unit tests)."""

    mount: Path

    def create(self, path: str, *, exist_ok: bool = False) -> Cgroup: ...

    def open(self, path: str) -> Cgroup: ...

    def missing_controllers(self, resources: Mapping[str, Any], path: str) -> list[MissingLimit]: ...


class CgroupV2Manager:
    """Cgroups under one cgroup2 mount."""

    def __init__(self, mount: Path) -> None:
        self.mount = mount

    @classmethod
    def discover(cls, mountinfo: Path = MOUNTINFO) -> CgroupV2Manager:
        """The manager of this process's cgroup2 mount, found in mountinfo (never assumed)."""
        return cls(paths.find_cgroup2_mount(mountinfo.read_text()))

    def __repr__(self) -> str:
        return f"CgroupV2Manager({str(self.mount)!r})"

    def cgroup(self, path: str) -> Cgroup:
        """The Cgroup object for a path, whether or not it exists."""
        return Cgroup(self.mount, paths.normalize(path))

    def open(self, path: str) -> Cgroup:
        cg = self.cgroup(path)
        if not cg.exists():
            raise errors.NotFound(f"cgroup {cg.path} does not exist")
        return cg

    def root_controllers(self) -> frozenset[str]:
        return self.cgroup("/").controllers()

    def create(self, path: str, *, exist_ok: bool = False) -> Cgroup:
        """Make the cgroup at `path` and any missing ancestors (all marked as crisp's), enabling controllers on the
        way down. An existing cgroup is AlreadyExists unless exist_ok. On failure nothing made here is left."""
        path = paths.normalize(path)
        if path == "/":
            raise errors.InvalidArgument("cannot create the root cgroup")
        cg = Cgroup(self.mount, path)
        if cg.exists():
            if exist_ok:
                return cg
            raise errors.AlreadyExists(f"cgroup {path} already exists")
        parts = path.strip("/").split("/")
        with contextlib.ExitStack() as undo:
            current = self.mount
            for i, part in enumerate(parts):
                parent, current = current, current / part
                is_leaf = i == len(parts) - 1
                if current.is_dir() and not is_leaf:
                    continue
                if parent != self.mount and (is_leaf or is_crisp_owned(parent)):
                    self._enable_controllers(parent)
                try:
                    os.mkdir(current, 0o755)
                except FileExistsError:
                    if is_leaf and not exist_ok:
                        raise errors.AlreadyExists(f"cgroup {path} already exists") from None
                    continue  # made by someone else meanwhile: not ours
                except OSError as exc:
                    raise errors.FailedPrecondition(f"cannot create cgroup {current}: {exc.strerror}") from exc
                undo.callback(_undo_mkdir, current)
                try:
                    mark_crisp_owned(current)
                except OSError as exc:
                    raise errors.FailedPrecondition(
                        f"cannot mark cgroup {current} as crisp's (xattr {exc.strerror})"
                    ) from exc
            undo.pop_all()
        log.debug("cgroup %s: created", path)
        return cg

    def adopt(self, path: str, resources: Mapping[str, Any] | None = None) -> Cgroup:
        """Take over the cgroup of a systemd unit crispd started for crisp (the systemd driver): its parent gets every
        controller it has enabled, as `create` does for the parent of what it makes (systemd enables only those it
        knows: not hugetlb, rdma, misc), `resources` are written (every limit, as `apply`), and, last, it is marked
        as crisp's: crisp then sets its limits and device filter and kills what is in it, but never removes it
        (stopping the unit does). The mark coming last tells a waiting executor that the scope is ready."""
        cg = self.open(path)
        if cg.dir.parent != self.mount:
            self._enable_controllers(cg.dir.parent)
        if resources:
            cg.write_limits(resources)
        try:
            mark_crisp_owned(cg.dir)
        except OSError as exc:
            raise errors.FailedPrecondition(f"cannot mark cgroup {cg.path} as crisp's (xattr {exc.strerror})") from exc
        return cg

    def _enable_controllers(self, cgroup_dir: Path) -> None:
        """Enable in `cgroup_dir`'s subtree_control every controller it has, one by one (one that cannot be
        enabled, e.g. because processes sit in that cgroup, is logged and left out)."""
        available = (fs.read(cgroup_dir / "cgroup.controllers") or "").split()
        enabled = set((fs.read(cgroup_dir / "cgroup.subtree_control") or "").split())
        for name in available:
            if name in enabled:
                continue
            try:
                fs.write(cgroup_dir / "cgroup.subtree_control", f"+{name}")
            except errors.CrispError as exc:
                log.warning("cgroup %s: cannot enable controller %s: %s", cgroup_dir, name, exc)

    def missing_controllers(self, resources: Mapping[str, Any], path: str) -> list[MissingLimit]:
        """The limits in `resources` (OCI linux.resources) that a cgroup at `path` could not enforce, whether or not
        it exists yet: crispd calls this before creating anything and fails (FAILED_PRECONDITION) or drops those
        keys (`resources.drop_limits`) as its config says. Bad values raise InvalidArgument."""
        return missing_for(resources, self.controllers_for(path))

    def controllers_for(self, path: str) -> frozenset[str]:
        """The controllers a cgroup at `path` has, or would have once `create` made it."""
        path = paths.normalize(path)
        cg = Cgroup(self.mount, path)
        if cg.exists():
            return cg.controllers()
        # the nearest existing ancestor decides: all its controllers if crisp may enable them there, else only
        # those already enabled for its children
        parts = path.strip("/").split("/")
        for depth in range(len(parts) - 1, -1, -1):
            ancestor = self.mount.joinpath(*parts[:depth])
            if (ancestor / "cgroup.procs").exists():
                direct_parent = depth == len(parts) - 1
                may_enable = ancestor != self.mount and (direct_parent or is_crisp_owned(ancestor))
                name = "cgroup.controllers" if may_enable else "cgroup.subtree_control"
                return frozenset((fs.read(ancestor / name) or "").split())
        return frozenset()


def _undo_mkdir(path: Path) -> None:
    try:
        os.rmdir(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("cgroup %s: could not remove after a failed create: %s", path, exc)
