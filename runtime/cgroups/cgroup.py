"""One cgroup v2 directory: processes, limits, device filter, stats, freeze, kill and removal."""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.cgroups import cpu, cpuset, ebpf, fs, hugetlb, io, memory, pids, pressure, rdma, unified
from runtime.cgroups.devices import DeviceRule, with_default_rules
from runtime.cgroups.resources import V1_ONLY, MissingLimit, Setting, v1_only_keys
from runtime.cgroups.stats import CgroupStats

log = logging.getLogger(__name__)

# set on every cgroup directory crisp makes: crisp removes (and enables controllers in) only cgroups carrying it.
# trusted.* needs CAP_SYS_ADMIN, so nobody without it can make crisp believe it owns a cgroup.
OWNER_XATTR = "trusted.crisp.created"

# the controller modules, in the order their settings are written (unified last: it may refine anything)
CONTROLLERS = (cpuset, cpu, memory, pids, hugetlb, io, rdma, unified)

_POLL_SLICE = 0.1  # seconds: an upper bound on one wait for cgroup.events, in case a notification is missed


def all_settings(resources: Mapping[str, Any]) -> list[Setting]:
    """Every interface-file write that `resources` (an OCI linux.resources dict) asks for; bad values raise
    InvalidArgument."""
    if not isinstance(resources, Mapping):
        raise errors.InvalidArgument(f"linux.resources must be an object, got {resources!r}")
    out: list[Setting] = []
    for module in CONTROLLERS:
        out += module.settings(resources)
    return out


def missing_for(resources: Mapping[str, Any], available: frozenset[str]) -> list[MissingLimit]:
    """The requested limits whose controller is not in `available` (tolerated ones left out)."""
    missing = [MissingLimit(key, V1_ONLY) for key in v1_only_keys(resources)]
    seen = {m.key for m in missing}
    for setting in all_settings(resources):
        if setting.controller is None or setting.controller in available or setting.tolerated:
            continue
        for key in setting.keys:
            if key not in seen:
                seen.add(key)
                missing.append(MissingLimit(key, setting.controller))
    return missing


class Cgroup:
    """A cgroup at `path` (relative to the cgroup2 mount at `mount`). Cheap to make; nothing is read until used."""

    def __init__(self, mount: Path, path: str) -> None:
        self.mount = mount
        self.path = path
        self.dir = mount / path.lstrip("/")

    def __repr__(self) -> str:
        return f"Cgroup({self.path!r})"

    # ---- state ----

    def exists(self) -> bool:
        return (self.dir / "cgroup.procs").exists()

    def _require(self) -> None:
        if not self.exists():
            raise errors.NotFound(f"cgroup {self.path} does not exist")

    def _require_owned(self, what: str) -> None:
        """crisp changes only cgroups it created (and what lies below them): never the root, never the kubelet's
        or the host's."""
        self._require()
        if not self.created_by_crisp():
            raise errors.FailedPrecondition(f"cgroup {self.path} was not created by crisp; refusing to {what} it")

    def _owned_unless_gone(self, what: str) -> bool:
        """For what a cgroup that is gone makes moot (kill, remove): False if it does not exist, also when it goes
        while this looks (another task removed it: a removed container's cleanup while its pod stops kills the
        pod's leaves); True if it is crisp's; FailedPrecondition if it is not."""
        if not self.exists():
            return False
        if self.created_by_crisp():
            return True
        if not self.exists():
            return False  # gone since the first look (its mark then reads as absent)
        raise errors.FailedPrecondition(f"cgroup {self.path} was not created by crisp; refusing to {what} it")

    def created_by_crisp(self) -> bool:
        return is_crisp_owned(self.dir)

    def controllers(self) -> frozenset[str]:
        """The controllers available in this cgroup (cgroup.controllers)."""
        text = fs.read(self.dir / "cgroup.controllers")
        if text is None:
            raise errors.NotFound(f"cgroup {self.path} does not exist")
        return frozenset(text.split())

    def procs(self) -> list[int]:
        """The pids in this cgroup itself (not in its children)."""
        text = fs.read(self.dir / "cgroup.procs")
        return [int(p) for p in text.split()] if text else []

    def children(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.dir) if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    def events(self) -> dict[str, int]:
        """cgroup.events: populated (1 while any process lives in the subtree) and frozen."""
        return fs.read_flat_keyed(self.dir / "cgroup.events") or {}

    def populated(self) -> bool:
        return self.events().get("populated", 0) == 1

    # ---- processes ----

    def add_process(self, pid: int) -> None:
        """Move a process (all its threads) into this cgroup. Refused for a cgroup with children: in cgroup v2 only
        leaves hold processes."""
        self._require_leaf_of_crisp()
        fs.write(self.dir / "cgroup.procs", str(pid))
        log.debug("cgroup %s: added process %d", self.path, pid)

    def open_for_new_process(self) -> int:
        """An fd of this cgroup's directory for a process to be born in (clone3's CLONE_INTO_CGROUP), under the same
        rules as `add_process`; the caller closes it."""
        self._require_leaf_of_crisp()
        return os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _require_leaf_of_crisp(self) -> None:
        """Where a process may go: a cgroup crisp made, without children (in cgroup v2 only leaves hold them)."""
        self._require_owned("add a process to")
        if self.children():
            raise errors.FailedPrecondition(
                f"cgroup {self.path} has child cgroups; processes go into leaf cgroups only"
            )

    # ---- limits ----

    def missing_controllers(self, resources: Mapping[str, Any]) -> list[MissingLimit]:
        """The requested limits this cgroup cannot enforce (see CgroupV2Manager.missing_controllers)."""
        return missing_for(resources, self.controllers())

    def apply(self, resources: Mapping[str, Any]) -> None:
        """Write the limits of an OCI `linux.resources` dict, at creation or as a live update.

        Every limit is required: a missing controller is FailedPrecondition before anything is written (crispd
        decides beforehand what to drop). Values that are 0 (unset) are left as they are. If a write fails, the
        values already written are put back. `devices` is not handled here: see set_device_filter.
        """
        self._require_owned("set limits on")
        self.write_limits(resources)

    def write_limits(self, resources: Mapping[str, Any]) -> None:
        """`apply` without the ownership check: for a cgroup crisp is taking over (`CgroupV2Manager.adopt`)."""
        settings = all_settings(resources)
        available = self.controllers()
        missing = missing_for(resources, available)
        if missing:
            raise errors.FailedPrecondition(
                f"cgroup {self.path}: no controller for {', '.join(str(m) for m in missing)}"
            )
        undo: list[tuple[Path, str]] = []
        try:
            for setting in settings:
                if setting.controller is not None and setting.controller not in available:
                    continue  # tolerated without its controller
                self._write_setting(setting, undo)
        except BaseException:
            for path, old in reversed(undo):
                try:
                    fs.write(path, old)
                except errors.CrispError as exc:
                    log.warning("cgroup %s: could not restore %s to %r: %s", self.path, path.name, old, exc)
            raise
        if settings:
            log.debug("cgroup %s: applied %s", self.path, ", ".join(f"{s.file}={s.value}" for s in settings))

    def _write_setting(self, setting: Setting, undo: list[tuple[Path, str]]) -> None:
        path, value = self.dir / setting.file, setting.value
        if not path.exists():
            if setting.fallback is not None and (self.dir / setting.fallback[0]).exists():
                path, value = self.dir / setting.fallback[0], setting.fallback[1]
            elif setting.optional:
                return
            else:
                raise errors.FailedPrecondition(
                    f"cgroup {self.path}: {setting.file} does not exist (needed for {', '.join(setting.keys)})"
                )
        old = fs.read(path)
        fs.write(path, value)
        if old is not None and "\n" not in old.strip():  # one-value files can be put back as they were
            undo.append((path, old.strip()))

    def set_device_filter(self, rules: Sequence[DeviceRule], *, defaults: bool = True) -> None:
        """Install the eBPF device filter for `rules` (runc's default rules appended unless defaults=False),
        replacing the one this cgroup had. Build rules from a spec with `devices.rules_from_oci`."""
        self._require_owned("set a device filter on")
        effective = with_default_rules(rules) if defaults else list(rules)
        count = ebpf.attach_device_filter(str(self.dir), effective)
        log.debug("cgroup %s: device filter of %d rules, %d instructions", self.path, len(effective), count)

    # ---- stats ----

    def stats(self) -> CgroupStats:
        """Everything this host's kernel reports for the cgroup; what it does not report is None."""
        self._require()
        return CgroupStats(
            cpu=cpu.read_stats(self.dir),
            memory=memory.read_stats(self.dir),
            pids=pids.read_stats(self.dir),
            io=io.read_stats(self.dir),
            cpu_pressure=pressure.read_pressure(self.dir, "cpu"),
            memory_pressure=pressure.read_pressure(self.dir, "memory"),
            io_pressure=pressure.read_pressure(self.dir, "io"),
        )

    # ---- freeze, kill, remove ----

    def freeze(self, timeout: float = 5.0) -> None:
        """Freeze every process in the subtree; returns once the kernel reports the cgroup frozen."""
        self._set_frozen(True, timeout)

    def thaw(self, timeout: float = 5.0) -> None:
        self._set_frozen(False, timeout)

    def _set_frozen(self, frozen: bool, timeout: float) -> None:
        self._require_owned("freeze or thaw")
        path = self.dir / "cgroup.freeze"
        if not path.exists():
            raise errors.FailedPrecondition(f"cgroup {self.path}: the kernel has no cgroup.freeze (needs 5.2)")
        fs.write(path, "1" if frozen else "0")
        if not self.wait_events("frozen", int(frozen), timeout):
            raise errors.DeadlineExceeded(
                f"cgroup {self.path} not {'frozen' if frozen else 'thawed'} after {timeout:g}s"
            )

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the subtree (cgroup.kill, or `kill_each` where the kernel lacks it) and wait
        until the subtree is empty. A cgroup that does not exist (or goes meanwhile) is already empty."""
        if not self._owned_unless_gone("kill"):
            return
        kill_file = self.dir / "cgroup.kill"
        if not kill_file.exists():
            self.kill_each(timeout)
            return
        try:
            fs.write(kill_file, "1")
        except errors.CrispError:
            if not self.exists():
                return  # removed meanwhile
            raise
        if not self.wait_empty(timeout):
            raise errors.DeadlineExceeded(f"cgroup {self.path}: processes left {timeout:g}s after cgroup.kill")
        log.debug("cgroup %s: killed", self.path)

    def kill_each(self, timeout: float = 5.0) -> None:
        """The fallback for kernels without cgroup.kill (< 5.14): freeze the subtree where possible (so nothing
        forks meanwhile), SIGKILL every pid in every cgroup.procs, thaw, and repeat until the subtree is empty."""
        if not self._owned_unless_gone("kill"):
            return
        deadline = time.monotonic() + timeout
        can_freeze = (self.dir / "cgroup.freeze").exists()
        while self.exists() and self.populated():
            if time.monotonic() >= deadline:
                raise errors.DeadlineExceeded(f"cgroup {self.path}: processes left after {timeout:g}s of SIGKILL")
            frozen = False
            if can_freeze:
                try:
                    fs.write(self.dir / "cgroup.freeze", "1")
                    frozen = True
                except errors.CrispError:
                    pass
            try:
                for pid in self._subtree_pids():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            finally:
                if frozen:
                    try:
                        fs.write(self.dir / "cgroup.freeze", "0")
                    except errors.CrispError:
                        if self.exists():
                            raise  # else removed meanwhile: nothing is left frozen
            self.wait_empty(min(_POLL_SLICE, max(0.0, deadline - time.monotonic())))

    def _subtree_pids(self) -> list[int]:
        out: list[int] = []
        for dirpath, _, _ in os.walk(self.dir):
            text = fs.read(Path(dirpath) / "cgroup.procs")
            if text:
                out += [int(p) for p in text.split()]
        return out

    def wait_empty(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until no process lives in the subtree; True if it is empty."""
        return self.wait_events("populated", 0, timeout)

    def wait_events(self, key: str, want: int, timeout: float) -> bool:
        """Wait until cgroup.events says `key` is `want`, woken by the kernel's notification on the file.
        A cgroup that is gone counts as empty and thawed."""
        deadline = time.monotonic() + timeout
        try:
            fd = os.open(self.dir / "cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return want == 0
        try:
            poller = select.poll()
            poller.register(fd, select.POLLPRI | select.POLLERR)
            while True:
                try:
                    os.lseek(fd, 0, os.SEEK_SET)
                    values = fs.parse_flat_keyed(os.read(fd, 4096).decode())
                except OSError as exc:
                    if exc.errno == errno.ENODEV:  # removed while we waited
                        return want == 0
                    raise
                if values.get(key) == want:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                poller.poll(min(remaining, _POLL_SLICE) * 1000)
        finally:
            os.close(fd)

    def remove(self, timeout: float = 5.0) -> None:
        """Remove this cgroup and everything below it, children first, once no process is left (waiting up to
        `timeout`). Only a cgroup crisp created can be removed (the cgroups a container made inside its own are
        part of it). Removing a cgroup that does not exist (or goes meanwhile) is not an error. Does not kill: call
        kill() first."""
        if not self._owned_unless_gone("remove"):
            return
        deadline = time.monotonic() + timeout
        if not self.wait_empty(timeout):
            raise errors.FailedPrecondition(
                f"cgroup {self.path} still has processes after {timeout:g}s: {self._subtree_pids()}"
            )
        for dirpath, dirnames, _ in os.walk(self.dir, topdown=False):
            for name in dirnames:
                _rmdir(Path(dirpath) / name, deadline)
        _rmdir(self.dir, deadline)
        log.debug("cgroup %s: removed", self.path)


def is_crisp_owned(cgroup_dir: Path) -> bool:
    try:
        return os.getxattr(cgroup_dir, OWNER_XATTR) == b"1"
    except OSError:
        return False


def mark_crisp_owned(cgroup_dir: Path) -> None:
    os.setxattr(cgroup_dir, OWNER_XATTR, b"1")


def _rmdir(path: Path, deadline: float) -> None:
    """rmdir a cgroup; EBUSY right after its last process exited is retried until the deadline."""
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise errors.FailedPrecondition(f"cannot remove cgroup {path}: {exc.strerror}") from exc
        time.sleep(0.01)
