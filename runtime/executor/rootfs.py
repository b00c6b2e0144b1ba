"""The container's filesystem, built inside its new mount namespace: rootfs, mounts, /dev, pivot_root, and the
masked and read-only paths.

Order (as runc): root propagation, the overlay of the image layers, the rootfs bound onto itself, the spec's
mounts in order (each target resolved inside the rootfs), /dev, pivot_root; then, seen from inside, read-only
and masked paths and a read-only root.

A mount's destination is checked where it really lands (the image's symlinks followed inside the root, as runc's
SecureJoin does): `/procl/sys` with `/procl -> /proc` is inside /proc. After pivot_root nothing goes through the
container's /proc: the masking and read-only binds are attached by fd (open_tree, fsmount, move_mount, mount_setattr)
and what needs a procfs (sysctls, the start fifo) uses a private one (procfs.py).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from collections.abc import Iterator

from runtime import errors
from runtime.bundle import Overlay, mount_refused_in_proc
from runtime.executor import devices, mountopts, paths, procfs
from runtime.executor.oci import Mount, Spec
from runtime.linux import idmap
from runtime.linux import syscalls as sc

# statvfs f_flag bits that a bind remount must keep unless the mount options clear them
_ST_KEEP = {sc.MS_NOSUID: os.ST_NOSUID, sc.MS_NODEV: os.ST_NODEV, sc.MS_NOEXEC: os.ST_NOEXEC}


class MountError(errors.InvalidArgument):
    pass


@contextlib.contextmanager
def _fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _kept_flags(fd: int, cleared: int) -> int:
    st = os.fstatvfs(fd)
    return sum(ms for ms, st_flag in _ST_KEEP.items() if st.f_flag & st_flag and not cleared & ms)


def _cleared_flags(options: tuple[str, ...]) -> int:
    out = 0
    for opt, flag in (("suid", sc.MS_NOSUID), ("dev", sc.MS_NODEV), ("exec", sc.MS_NOEXEC)):
        if opt in options:
            out |= flag
    return out


def check_proc_destination(mount: Mount, resolved: str | None = None) -> None:
    """Nothing but procfs itself (and runc's few files) may be mounted in /proc; `resolved` is where the
    destination really lands (its symlinks followed inside the root)."""
    dest = posixpath.normpath("/" + (mount.destination if resolved is None else resolved).lstrip("/"))
    if not mount_refused_in_proc(dest, mount.type):
        return
    via = "" if resolved is None or dest == mount.destination else f" (through a symlink: it lands on {dest})"
    raise MountError(f"mount on {mount.destination}{via}: nothing may be mounted inside /proc but the proc "
                     "filesystem itself")


def mount_point_of(path: str, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The mount point of the mount that holds `path` (the longest mount point that is a prefix of it)."""
    path = os.path.realpath(path)
    best = "/"
    with open(mountinfo) as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                best = point
    return best


def before_userns(sys: sc.Syscalls, spec: Spec) -> None:
    """What a container joining a pod's user namespace needs mounted by the host's root: run by stage 1 in a mount
    namespace of its own (launcher.NamespacePlan.before_userns), which the container's is then copied from. The
    id-mapped mounts of the bundle (rootfs layers, volumes) are staged and the rootfs overlay is mounted over
    them; nothing of it reaches the host's mount namespace."""
    sys.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    if spec.idmap is not None:
        idmap.stage(spec.idmap)
    if spec.overlay is not None:
        Rootfs(sys, spec).mount_overlay(spec.overlay)
    try:
        sys.mount(spec.root_path, spec.root_path, None, sc.MS_BIND | sc.MS_REC)
    except FileNotFoundError:
        raise errors.NotFound(f"root.path {spec.root_path} does not exist") from None


class Rootfs:
    def __init__(self, sys: sc.Syscalls, spec: Spec, *, premounted: bool = False) -> None:
        self.sys = sys
        self.spec = spec
        self.root = spec.root_path
        self.premounted = premounted  # before_userns mounted the overlay and bound the root
        self._root_fd = -1
        self._dev_null = -1
        # bind sources opened before the process became the user namespace's root (mounts index -> fd)
        self._sources: dict[int, int] = {}
        self._root_parent_fd = -1
        self._root_name = ""

    def hold_host_paths(self) -> None:
        """In a user namespace, before the process takes the namespace's root ids (which may not reach the
        bundle or a volume through their host dirs): open the rootfs and every bind source by path; the mounts
        then go through the fds."""
        parent, self._root_name = os.path.split(self.root.rstrip("/"))
        self._root_parent_fd = os.open(parent or "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for i, mount in enumerate(self.spec.mounts):
            if (mount.type == "bind" or "bind" in mount.options or "rbind" in mount.options) \
                    and mount.source.startswith("/"):
                try:
                    self._sources[i] = os.open(mount.source, os.O_PATH | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise errors.NotFound(
                        f"mount source {mount.source!r} for {mount.destination} does not exist") from None
        self.proc_fd = -1  # the private procfs, from pivot() until finish() is done

    # ------------------------------------------------------------------ before pivot_root (host paths visible)

    def prepare(self) -> None:
        sys = self.sys
        propagation = self.spec.linux.rootfs_propagation or "rprivate"
        sys.mount(None, "/", None, mountopts.propagation_flags(propagation))
        # pivot_root refuses a new root whose parent mount is shared; with (r)shared propagation that is every
        # mount here: make the mount the rootfs sits on private (only it: the rest keeps the asked propagation)
        if propagation in ("shared", "rshared"):
            sys.mount(None, mount_point_of(os.path.dirname(self.root.rstrip("/")) or "/"), None, sc.MS_PRIVATE)
        if not self.premounted:
            if self.spec.overlay is not None:
                self.mount_overlay(self.spec.overlay)
            try:
                sys.mount(self.root, self.root, None, sc.MS_BIND | sc.MS_REC)
            except FileNotFoundError:
                raise errors.NotFound(f"root.path {self.root} does not exist") from None
        elif self._root_parent_fd >= 0:
            # what before_userns mounted came into this namespace locked to its parent, and pivot_root refuses a
            # locked new root: bind it once more from in here, and step onto that bind through the bundle dir
            sys.mount(paths.fd_path(self._root_fd), paths.fd_path(self._root_fd), None, sc.MS_BIND | sc.MS_REC)
            os.close(self._root_fd)
            self._root_fd = os.open(self._root_name, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                                    dir_fd=self._root_parent_fd)
            os.close(self._root_parent_fd)
            self._root_parent_fd = -1
        if self._root_fd < 0:
            self._root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        if propagation in ("shared", "rshared"):
            sys.mount(None, paths.fd_path(self._root_fd), None, sc.MS_PRIVATE)
        for i, mount in enumerate(self.spec.mounts):
            try:
                self._mount(mount, self._sources.pop(i, -1))
            except OSError as exc:
                raise MountError(f"mounts[{i}] {mount.type or 'bind'} {mount.source or '-'} on "
                                 f"{mount.destination}: {exc.strerror}") from None
        if self._needs_dev_setup():
            for device in devices.all_devices(self.spec.linux.devices):
                try:
                    devices.create_device(sys, self._root_fd, device)
                except OSError as exc:
                    raise MountError(f"device {device.path}: {exc.strerror}") from None
            devices.create_symlinks(sys, self._root_fd)
        try:
            # a dangling symlink on the way is followed: its target is made inside the root, as runc does
            os.close(paths.ensure_dir(sys, self._root_fd, paths.resolve_in_root(sys, self._root_fd,
                                                                               self.spec.process.cwd)))
        except OSError as exc:
            raise errors.InvalidArgument(
                f"cwd {self.spec.process.cwd!r} set in config.json cannot be made a directory: {exc.strerror}"
            ) from None

    def mount_overlay(self, overlay: Overlay) -> None:
        data, base = overlay.mount_data()
        old_cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) if base else -1
        try:
            if base:
                os.chdir(base)
            self.sys.mount("overlay", self.root, "overlay", 0, data)
        except OSError as exc:
            raise MountError(f"rootfs overlay on {self.root}: {exc.strerror}") from None
        finally:
            if base:
                os.fchdir(old_cwd)
                os.close(old_cwd)

    def _needs_dev_setup(self) -> bool:
        for m in self.spec.mounts:
            if m.destination == "/dev" and ("bind" in m.options or "rbind" in m.options or m.type == "bind"):
                return False
        return True

    def _mount(self, mount: Mount, source_fd: int = -1) -> None:
        sys = self.sys
        check_proc_destination(mount)
        try:
            opts = mountopts.parse_options(mount.options)
        except mountopts.UnsupportedOption as exc:
            raise MountError(str(exc)) from None
        is_bind = mount.type == "bind" or opts.is_bind
        fstype = mount.type
        if not is_bind and fstype in ("proc", "sysfs", "cgroup", "cgroup2"):
            # these must land on a real directory of the rootfs, not through a symlink
            self._refuse_symlink(mount.destination)
        # where it really lands, checked before anything is made there (and made there: a dangling symlink's
        # target is created inside the root, as runc does)
        dest = paths.resolve_in_root(sys, self._root_fd, mount.destination)
        check_proc_destination(mount, dest)
        if is_bind:
            source = paths.fd_path(source_fd) if source_fd >= 0 else mount.source
            try:
                like_dir = os.path.isdir(source) if source.startswith("/") else True
                os.stat(source)
                with _fd(self._target(mount, dest, like_dir)) as target:
                    sys.mount(source, paths.fd_path(target), None, opts.flags | sc.MS_BIND)
            except FileNotFoundError:
                raise errors.NotFound(
                    f"mount source {mount.source!r} for {mount.destination} does not exist") from None
            finally:
                if source_fd >= 0:
                    os.close(source_fd)
            self._after_mount(dest, mount, opts, remount=True)
            return
        source = mount.source or fstype
        if fstype == "cgroup":
            fstype = source = "cgroup2"  # the executor is cgroup v2 only: the container's own cgroup, via its ns
        data = opts.data
        with _fd(self._target(mount, dest, like_dir=True)) as target:
            sys.mount(source, paths.fd_path(target), fstype, opts.flags & ~sc.MS_REMOUNT, data or None)
        self._after_mount(dest, mount, opts, remount=False)

    def _target(self, mount: Mount, dest: str, like_dir: bool) -> int:
        """The mount point at `dest` (made if missing), checked to be where `dest` said (not moved meanwhile)."""
        fd = paths.ensure_target(self.sys, self._root_fd, dest, like_dir)
        try:
            landed = paths.path_in_root(self._root_fd, fd)
            if landed != dest:
                raise MountError(f"mount on {mount.destination}: its target moved to {landed} while it was made")
            check_proc_destination(mount, landed)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _refuse_symlink(self, destination: str) -> None:
        try:
            fd = self.sys.openat2(self._root_fd, destination, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW, 0,
                                  paths.RESOLVE)
        except FileNotFoundError:
            return
        with _fd(fd):
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise MountError(f"{destination} is a symlink: refusing to mount through it")

    def _after_mount(self, dest: str, mount: Mount, opts: mountopts.MountOptions, remount: bool) -> None:
        """Bind remount for the flags, then recursive attributes, then propagation, on the new mount."""
        sys = self.sys
        with _fd(paths.open_in_root(sys, self._root_fd, dest)) as fd:
            target = paths.fd_path(fd)
            flags = opts.flags & ~(sc.MS_BIND | sc.MS_REC | sc.MS_REMOUNT)
            if remount and flags:
                flags |= _kept_flags(fd, _cleared_flags(mount.options))
                sys.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | flags)
            if opts.recursive_attrs:
                sys.mount_setattr(fd, "", sc.AT_EMPTY_PATH | sc.AT_RECURSIVE, opts.attr_set, opts.attr_clr)
            for prop in opts.propagation:
                sys.mount(None, target, None, prop)

    # ------------------------------------------------------------------ pivot_root

    def pivot(self) -> None:
        sys = self.sys
        old_root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fchdir(self._root_fd)
            sys.pivot_root(".", ".")
            # the old root is now stacked on the new one: step onto it (not the new root, whose mounts, shared
            # volumes included, must keep their propagation), keep its unmount from propagating, detach it
            os.fchdir(old_root)
            sys.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC)
            sys.umount2(".", sc.MNT_DETACH)
        finally:
            os.close(old_root)
        os.chdir("/")
        os.close(self._root_fd)
        self._root_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.proc_fd = procfs.open_private(sys)

    # ------------------------------------------------------------------ after pivot_root (container paths)

    def finish(self) -> None:
        if self.spec.linux.masked_paths:
            self._open_dev_null()
        for path in self.spec.linux.readonly_paths:
            try:
                self._readonly_path(path)
            except OSError as exc:
                raise MountError(f"read-only path {path}: {exc.strerror}") from None
        for path in self.spec.linux.masked_paths:
            try:
                self._mask_path(path)
            except OSError as exc:
                raise MountError(f"masked path {path}: {exc.strerror}") from None
        if self.spec.root_readonly:
            with _fd(os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)) as fd:
                flags = sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | _kept_flags(fd, 0)
            self.sys.mount(None, "/", None, flags)
        for fd in (self._root_fd, self._dev_null, self.proc_fd):
            if fd >= 0:
                os.close(fd)
        self._root_fd = self._dev_null = self.proc_fd = -1

    def _open_dev_null(self) -> None:
        """The container's /dev/null, the source of masking binds (a bind source must be in our mount
        namespace, so not the host's); refused unless it really is the null device."""
        try:
            fd = paths.open_in_root(self.sys, self._root_fd, "/dev/null")
        except OSError as exc:
            raise MountError(f"masked paths need /dev/null in the container: {exc.strerror}") from None
        if not devices.is_dev_null(fd):
            os.close(fd)
            raise MountError("/dev/null in the container is not the null device: refusing to mask with it")
        self._dev_null = fd

    def _open_existing(self, path: str) -> int | None:
        try:
            return paths.open_in_root(self.sys, self._root_fd, path)
        except OSError as exc:
            if paths.missing(exc):
                return None
            raise

    def _attach(self, mount_fd: int, target_fd: int) -> None:
        """Attach a detached mount onto the object an O_PATH fd holds: no path is resolved on either side."""
        try:
            self.sys.move_mount(mount_fd, "", target_fd, "", sc.MOVE_MOUNT_F_EMPTY_PATH | sc.MOVE_MOUNT_T_EMPTY_PATH)
        finally:
            os.close(mount_fd)

    def _readonly_path(self, path: str) -> None:
        """A read-only copy of the mount tree at `path` put over it (runc: bind onto itself, remount ro)."""
        fd = self._open_existing(path)
        if fd is None:
            return
        with _fd(fd):
            tree = self.sys.open_tree(fd, "", sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_EMPTY_PATH
                                      | sc.AT_RECURSIVE)
            try:
                self.sys.mount_setattr(tree, "", sc.AT_EMPTY_PATH | sc.AT_RECURSIVE, sc.MOUNT_ATTR_RDONLY)
            except BaseException:
                os.close(tree)
                raise
            self._attach(tree, fd)

    def _mask_path(self, path: str) -> None:
        """An empty read-only tmpfs over a dir, the container's /dev/null over anything else."""
        fd = self._open_existing(path)
        if fd is None:
            return
        with _fd(fd):
            if paths.is_dir_fd(fd):
                fs = self.sys.fsopen("tmpfs", sc.FSOPEN_CLOEXEC)
                try:
                    self.sys.fsconfig(fs, sc.FSCONFIG_CMD_CREATE)
                    mnt = self.sys.fsmount(fs, sc.FSMOUNT_CLOEXEC, sc.MOUNT_ATTR_RDONLY)
                finally:
                    os.close(fs)
            else:
                mnt = self.sys.open_tree(self._dev_null, "", sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC
                                         | sc.AT_EMPTY_PATH)
            self._attach(mnt, fd)
