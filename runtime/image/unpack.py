"""Unpack one layer tar (plain, gzip or zstd) into a snapshot dir, an overlayfs lower dir.

Every entry is created relative to a directory fd, and every parent is opened with `O_NOFOLLOW | O_DIRECTORY`, so
no entry can write outside the snapshot: absolute names, `..`, a parent that is a symlink and hardlinks to outside
the layer all fail the layer with `UnsafeLayer` (the caller throws the half-made snapshot away). Not
`tarfile.extractall`: it applies no xattrs, and its `data` filter rejects what real images carry (setuid files,
device nodes, absolute symlink targets).

OCI whiteouts become overlayfs whiteouts: `.wh.NAME` -> a 0:0 character device `NAME`; `.wh..wh..opq` -> the xattr
`trusted.overlay.opaque=y` on its dir. Ownership, modes (setuid/setgid/sticky), mtimes, device nodes, fifos,
hardlinks, symlinks and `SCHILY.xattr.*` pax headers (file capabilities) are applied. Runs in a worker thread,
with a thread of its own that reads and inflates the layer ahead (`_Inflating`).

Hostile layers: an entry the filesystem cannot hold as given (a name part over 255 bytes, a symlink target over
4095, ids outside 0..2**32-2, an mtime outside 64-bit nanoseconds) is refused with `UnsafeLayer` naming it.
Sparse entries (GNU 'S', PAX GNU.sparse.*) are refused: the OCI image spec says layers should not use them, no
image builder writes them, and unpacked they are written out in full (a 106-byte layer wrote 2 GiB). Every entry
counts its apparent size (its header's size, plus 512 bytes for the header) against `UnpackLimits` before a byte
of it is written: a layer, and the layers one pull unpacks together, have a cap (compression bombs).
At most `_DIR_CACHE` directory fds stay open, whatever the number of directories in the layer.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import logging
import math
import os
import queue
import shutil
import stat
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import zstandard
from isal import igzip, igzip_lib

from runtime import errors
from runtime.fstree import remove_tree

log = logging.getLogger(__name__)
T = TypeVar("T")

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
XATTR_PAX_PREFIX = "SCHILY.xattr."
_CHUNK = 1 << 20
# what tarfile's stream reads at a time: it slices what is left of its buffer after every 512-byte header, so a
# buffer of _CHUNK copied up to a MiB per entry
_TAR_BUFFER = 16 << 10
# what the inflating thread reads at a time, and how many such chunks it may be ahead of the tar reader
_PIPE_CHUNK = 256 << 10
_PIPE_DEPTH = 8
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# directory fds kept open while unpacking (the most recently used ones)
_DIR_CACHE = 64
_NAME_MAX = 255
_PATH_MAX = 4096
_MAX_ID = 2**32 - 2  # 2**32-1 is "no change" to chown
_TAR_HEADER = 512
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# a class (isal's stubs call it an Exception instance)
_ISAL_ERROR = cast(type[Exception], igzip_lib.IsalError)


class UnsafeLayer(errors.InvalidArgument):
    """A layer entry that would escape its snapshot, or that cannot be represented."""


class ImageBudget:
    """The unpacked bytes the layers of one pull may add up to (shared by its layer threads)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        """Count n more bytes; False once the image is over its cap."""
        with self._lock:
            self.used += n
            return self.used <= self.limit


@dataclass(frozen=True)
class UnpackLimits:
    layer_bytes: int
    image: ImageBudget


class _Inflating(io.RawIOBase):
    """The uncompressed stream of a layer, read, inflated and hashed (its diff id) ahead by a thread of its own.

    Reading, inflating and hashing release the GIL; parsing the tar and making its entries mostly hold it: in two
    threads the two overlap, on two cores the unpack takes about as long as the longer of them instead of both.
    The thread stays at most `_PIPE_DEPTH` chunks ahead; what it raises comes out of `readinto`, as raised, where
    the source's read raised it before; `close` stops it and waits for it."""

    def __init__(self, source: IO[bytes], cancel: threading.Event | None) -> None:
        self._source = source
        self._cancel = cancel
        # complete once `readinto` has returned 0 (the thread's last act before the end was hashing)
        self.hash = hashlib.sha256()
        self.size = 0
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(_PIPE_DEPTH)
        self._stop = threading.Event()
        self._chunk = memoryview(b"")
        self._end: bytes | BaseException | None = None  # b"" at the end, or what the thread raised
        self._thread = threading.Thread(target=self._inflate, name="crisp-inflate", daemon=True)
        self._thread.start()

    def _inflate(self) -> None:
        try:
            while not self._stop.is_set():
                if self._cancel is not None and self._cancel.is_set():
                    raise errors.Cancelled("layer unpack cancelled")
                data = self._source.read(_PIPE_CHUNK)
                self.hash.update(data)
                self.size += len(data)
                self._queue.put(data)
                if not data:
                    return
        except BaseException as exc:
            self._queue.put(exc)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._cancel is not None and self._cancel.is_set():
            raise errors.Cancelled("layer unpack cancelled")
        if not self._chunk:
            if self._end is None:
                item = self._queue.get()
                if isinstance(item, BaseException) or not item:
                    self._end = item
                else:
                    self._chunk = memoryview(item)
            if isinstance(self._end, BaseException):
                raise self._end
            if self._end is not None:
                return 0
        n = min(len(buffer), len(self._chunk))
        buffer[:n] = self._chunk[:n]
        self._chunk = self._chunk[n:]
        return n

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # it may wait to put a chunk nobody will take
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
            self._thread.join(0.01)
        super().close()


def open_decompressed(f: IO[bytes]) -> IO[bytes]:
    """The uncompressed stream of a layer blob, by its magic bytes (media types are often wrong).

    gzip is inflated by ISA-L (python-isal's `IGzipFile`: the stdlib's `gzip.GzipFile` with a reader in C that
    releases the GIL), two to three times as fast as zlib; the same checks (CRC, length, several members) and
    errors, but `IsalError` where zlib raises `zlib.error`."""
    head = f.read(4)
    f.seek(0)
    if head.startswith(GZIP_MAGIC):
        return cast(IO[bytes], igzip.IGzipFile(fileobj=f, mode="rb"))  # type: ignore[no-untyped-call]
    if head.startswith(ZSTD_MAGIC):
        return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True))
    return f


# what an entry can make the filesystem say that is the entry's fault, not the node's
_ENTRY_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EINVAL, errno.ELOOP, errno.EOVERFLOW, errno.EMLINK,
                           errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.E2BIG, errno.ERANGE})


@dataclass(frozen=True)
class UnpackResult:
    diff_id: str
    # uncompressed tar size
    tar_size: int
    entries: int


# pax and GNU long name headers are read into memory whole: a bigger one is refused before (Go's archive/tar
# refuses them past 1 MiB too)
_MAX_SPECIAL_HEADER = 1 << 20
_SPECIAL = {tarfile.XHDTYPE: "pax", tarfile.XGLTYPE: "pax global", tarfile.SOLARIS_XHDTYPE: "pax",
            tarfile.GNUTYPE_LONGNAME: "GNU long name", tarfile.GNUTYPE_LONGLINK: "GNU long link"}
_SPARSE = "sparse entries are not accepted in layers"


class _LayerTarInfo(tarfile.TarInfo):
    """tarfile's header parsing without its unbounded reads: special headers are capped, and a sparse entry is
    refused before its map (which may claim any length) is read."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        kind = _SPECIAL.get(self.type)
        if kind is not None and self.size > _MAX_SPECIAL_HEADER:
            raise tarfile.HeaderError(f"a {kind} header of {self.size} bytes (more than {_MAX_SPECIAL_HEADER})")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise tarfile.HeaderError(f"entry {self.name!r}: {_SPARSE}")
        return super()._proc_member(tarfile_)  # type: ignore[misc,no-any-return]

    def _refuse_sparse(self, next: tarfile.TarInfo, *_: object) -> None:
        raise tarfile.HeaderError(f"entry {next.name!r}: {_SPARSE}")

    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse


class _Unpacker:
    def __init__(self, root_fd: int, layer: str, cancel: threading.Event | None,
                 limits: UnpackLimits | None = None) -> None:
        self.root_fd = root_fd
        self.layer = layer
        self.cancel = cancel
        self.limits = limits
        self.apparent = 0
        # least recently used first; trimmed between entries only, so that an fd borrowed during one stays open
        self._dir_cache: OrderedDict[tuple[str, ...], int] = OrderedDict()
        self.dir_times: list[tuple[tuple[str, ...], int]] = []

    def close(self) -> None:
        self._clear_cache()

    def _clear_cache(self) -> None:
        for fd in self._dir_cache.values():
            os.close(fd)
        self._dir_cache.clear()

    def trim_cache(self) -> None:
        while len(self._dir_cache) > _DIR_CACHE:
            os.close(self._dir_cache.popitem(last=False)[1])

    def check(self, member: tarfile.TarInfo) -> None:
        """Refuse what the filesystem cannot hold as given, and sparse entries; count the apparent size."""
        name = member.name
        if member.sparse is not None or member.type == tarfile.GNUTYPE_SPARSE or any(
                key.startswith("GNU.sparse.") for key in member.pax_headers):
            raise self._unsafe(f"entry {name!r}: {_SPARSE}")
        for what, text, limit in (("name", name, _PATH_MAX - 1), ("link target", member.linkname, _PATH_MAX - 1)):
            raw = text.encode("utf-8", "surrogateescape")
            if b"\0" in raw:
                raise self._unsafe(f"entry {name!r}: its {what} contains a NUL byte")
            if len(raw) > limit:
                raise self._unsafe(f"entry {name[:200]!r}...: its {what} is longer than {limit} bytes")
        if any(len(part.encode("utf-8", "surrogateescape")) > _NAME_MAX for part in name.split("/")):
            raise self._unsafe(f"entry {name!r}: a part of its name is longer than {_NAME_MAX} bytes")
        for what, value in (("uid", member.uid), ("gid", member.gid)):
            if not 0 <= value <= _MAX_ID:
                raise self._unsafe(f"entry {name!r}: {what} {value} is out of range (0-{_MAX_ID})")
        mtime = member.mtime
        if not math.isfinite(mtime) or not -(2**63) < mtime * 1_000_000_000 < 2**63:
            raise self._unsafe(f"entry {name!r}: mtime {mtime} is outside 64-bit nanoseconds (years 1677-2262)")
        if member.size < 0:
            raise self._unsafe(f"entry {name!r}: negative size {member.size}")
        self._count(name, _TAR_HEADER + (member.size if member.isreg() else 0))

    def _count(self, name: str, n: int) -> None:
        if self.limits is None:
            return
        self.apparent += n
        if self.apparent > self.limits.layer_bytes:
            raise self._unsafe(f"entry {name!r}: the layer unpacks to more than {self.limits.layer_bytes} bytes "
                               "(image.max_layer_unpacked_bytes)")
        if not self.limits.image.take(n):
            raise self._unsafe(f"entry {name!r}: the image's layers unpack to more than {self.limits.image.limit} "
                               "bytes (image.max_image_unpacked_bytes)")

    def _unsafe(self, message: str) -> UnsafeLayer:
        return UnsafeLayer(f"layer {self.layer}: {message}")

    def split(self, name: str, what: str) -> list[str]:
        """The path components of an archive name; absolute names and `..` are refused."""
        if name.startswith("/"):
            raise self._unsafe(f"{what} {name!r} is an absolute path")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self._unsafe(f"{what} {name!r} contains '..'")
        return parts

    def open_dir(self, parts: list[str] | tuple[str, ...], create: bool) -> int:
        """A borrowed fd of the dir at `parts` (creating missing dirs 0755 if `create`), never through a symlink.

        Valid until the next entry: only the dir itself is cached, the ones on the way are opened and closed."""
        key = tuple(parts)
        if not key:
            return self.root_fd
        cached = self._dir_cache.get(key)
        if cached is not None:
            self._dir_cache.move_to_end(key)
            return cached
        depth = len(key) - 1
        while depth > 0 and key[:depth] not in self._dir_cache:
            depth -= 1
        fd = self._dir_cache[key[:depth]] if depth else self.root_fd
        owned = False
        try:
            for i in range(depth, len(key)):
                child = self._open_child(fd, key[: i + 1], create)
                if owned:
                    os.close(fd)
                fd, owned = child, True
        except BaseException:
            if owned:
                os.close(fd)
            raise
        self._dir_cache[key] = fd
        return fd

    def _open_child(self, parent: int, key: tuple[str, ...], create: bool) -> int:
        name = key[-1]
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise self._unsafe(f"{'/'.join(key)} does not exist") from None
            os.mkdir(name, 0o755, dir_fd=parent)
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise self._unsafe(f"parent {'/'.join(key)} is {kind}: entries under it would escape") from None

    def _create(self, parts: list[str], dir_fd: int, make: Callable[[], T]) -> T:
        """`make()` the entry at `parts` (in dir_fd), in place of what an earlier entry made there if need be: tried
        first as if nothing were there (as in most layers), which saves a stat per entry."""
        try:
            return make()
        except FileExistsError:
            self._remove_existing(parts, dir_fd, keep_dir=False)
        return make()

    def _remove_existing(self, parts: list[str], dir_fd: int, keep_dir: bool) -> bool:
        """Make room for a new entry at `parts` (in dir_fd); returns True if a dir exists there and is kept."""
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            # cached fds of the tree would point into removed dirs
            prefix = tuple(parts)
            for key in [k for k in self._dir_cache if k[:len(prefix)] == prefix]:
                os.close(self._dir_cache.pop(key))
            remove_tree(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)
        return False

    def apply_xattrs(self, member: tarfile.TarInfo, fd: int | None, dir_fd: int, name: str) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith(XATTR_PAX_PREFIX):
                continue
            attr = key[len(XATTR_PAX_PREFIX):]
            if attr.startswith("trusted.overlay."):
                # overlayfs's own metadata (redirects, metacopy, opaque) is never taken from an image
                log.warning("layer %s: %s: ignoring xattr %s", self.layer, member.name, attr)
                continue
            data = value.encode("utf-8", "surrogateescape")
            try:
                if fd is not None:
                    os.setxattr(fd, attr, data)
                else:
                    os.setxattr(f"/proc/self/fd/{dir_fd}/{name}", attr, data, follow_symlinks=False)
            except OSError as exc:
                if exc.errno in (errno.ENOTSUP, errno.EPERM):
                    log.warning("layer %s: %s: cannot set xattr %s: %s", self.layer, member.name, attr,
                                exc.strerror)
                    continue
                raise

    def entry(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise errors.Cancelled(f"unpacking layer {self.layer} cancelled")
        self.trim_cache()
        self.check(member)
        parts = self.split(member.name, "entry")
        if not parts:
            if member.isdir():  # "./": the snapshot's root dir itself
                self._set_dir_meta(member, self.root_fd, ())
            return
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts)
            return
        dir_fd = self.open_dir(parts[:-1], create=True)
        mtime_ns = int(member.mtime * 1_000_000_000)
        if member.isdir():
            try:
                os.mkdir(base, 0o700, dir_fd=dir_fd)
            except FileExistsError:
                if not self._remove_existing(parts, dir_fd, keep_dir=True):
                    os.mkdir(base, 0o700, dir_fd=dir_fd)
            fd = self.open_dir(parts, create=False)
            self._set_dir_meta(member, fd, tuple(parts))
        elif member.islnk():
            self._hardlink(member, parts, dir_fd)
        elif member.issym():
            self._create(parts, dir_fd, lambda: os.symlink(member.linkname, base, dir_fd=dir_fd))
            os.chown(base, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)
            self.apply_xattrs(member, None, dir_fd, base)
            os.utime(base, ns=(mtime_ns, mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        elif member.isreg():
            fd = self._create(parts, dir_fd, lambda: os.open(
                base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd))
            try:
                source = tar.extractfile(member)
                if source is not None:
                    with os.fdopen(os.dup(fd), "wb", closefd=True) as out:
                        shutil.copyfileobj(source, out, _CHUNK)
                os.fchown(fd, member.uid, member.gid)
                os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears setuid/setgid
                self.apply_xattrs(member, fd, dir_fd, base)  # after chown, which clears security.capability
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)
        elif member.ischr() or member.isblk() or member.isfifo():
            if member.isfifo():
                self._create(parts, dir_fd, lambda: os.mkfifo(base, 0o600, dir_fd=dir_fd))
            else:
                node = (stat.S_IFCHR if member.ischr() else stat.S_IFBLK) | 0o600
                device = os.makedev(member.devmajor, member.devminor)
                self._create(parts, dir_fd, lambda: os.mknod(base, node, device, dir_fd=dir_fd))
            os.chown(base, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)
            # the node was just made by us in a dir only we write to: following its name cannot leave the layer
            os.chmod(base, member.mode & 0o7777, dir_fd=dir_fd)
            self.apply_xattrs(member, None, dir_fd, base)
            os.utime(base, ns=(mtime_ns, mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        else:
            raise self._unsafe(f"entry {member.name!r} has an unsupported type {member.type!r}")

    def _set_dir_meta(self, member: tarfile.TarInfo, fd: int, parts: tuple[str, ...]) -> None:
        os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)
        self.apply_xattrs(member, fd, fd, ".")
        self.dir_times.append((parts, int(member.mtime * 1_000_000_000)))

    def _whiteout(self, parts: list[str]) -> None:
        base = parts[-1]
        dir_fd = self.open_dir(parts[:-1], create=True)
        if base == WHITEOUT_OPAQUE:
            os.setxattr(dir_fd, OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            return  # other AUFS metadata (.wh..wh.plnk, ...) means nothing to overlayfs
        hidden = base[len(WHITEOUT_PREFIX):]
        if hidden in ("", ".", ".."):
            raise self._unsafe(f"whiteout {'/'.join(parts)!r} names no file")
        self._remove_existing([*parts[:-1], hidden], dir_fd, keep_dir=False)
        os.mknod(hidden, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=dir_fd)

    def _hardlink(self, member: tarfile.TarInfo, parts: list[str], dir_fd: int) -> None:
        target = self.split(member.linkname, f"hardlink {member.name!r} -> target")
        if not target:
            raise self._unsafe(f"hardlink {member.name!r} points at the layer's root")
        if target != parts:
            # as most are: a target in this layer that is no directory, nothing at `parts` yet; when the link fails,
            # the checks below say why (or make room for it)
            with contextlib.suppress(OSError, UnsafeLayer):
                target_dir = self.open_dir(target[:-1], create=False)
                os.link(target[-1], parts[-1], src_dir_fd=target_dir, dst_dir_fd=dir_fd, follow_symlinks=False)
                return
        try:
            target_dir = self.open_dir(target[:-1], create=False)
            st = os.stat(target[-1], dir_fd=target_dir, follow_symlinks=False)
        except (FileNotFoundError, UnsafeLayer):
            raise self._unsafe(
                f"hardlink {member.name!r} -> {member.linkname!r}: the target is not in this layer") from None
        if stat.S_ISDIR(st.st_mode):
            raise self._unsafe(f"hardlink {member.name!r} -> {member.linkname!r}: the target is a directory")
        if target == parts:
            return
        base = parts[-1]
        self._remove_existing(parts, dir_fd, keep_dir=False)
        # the removal may have closed the target dir's cached fd: open it again
        target_dir = self.open_dir(target[:-1], create=False)
        os.link(target[-1], base, src_dir_fd=target_dir, dst_dir_fd=dir_fd, follow_symlinks=False)

    def finish(self) -> None:
        """Directory mtimes last: creating entries in a dir changes its mtime."""
        for parts, mtime_ns in reversed(self.dir_times):
            self.trim_cache()
            try:
                fd = self.open_dir(parts, create=False)
            except UnsafeLayer:
                continue  # replaced by a later entry
            os.utime(fd, ns=(mtime_ns, mtime_ns))


def unpack_layer(blob: Path, dest: Path, layer: str, expected_diff_id: str | None = None,
                 cancel: threading.Event | None = None,
                 on_entry: Callable[[tarfile.TarInfo], None] | None = None,
                 limits: UnpackLimits | None = None) -> UnpackResult:
    """Unpack the layer blob into `dest` (an empty dir); verifies the uncompressed digest when it is known.

    On any error `dest` may hold a partial tree: the caller removes it.
    """
    root_fd = os.open(dest, _DIR_FLAGS)
    unpacker = _Unpacker(root_fd, layer, cancel, limits)
    entries = 0
    try:
        with open(blob, "rb") as raw:
            try:
                decompressed = open_decompressed(raw)
            except OSError as exc:
                raise UnsafeLayer(f"layer {layer}: cannot decompress: {exc}") from None
            reader = _Inflating(decompressed, cancel)
            buffered = io.BufferedReader(reader, _CHUNK)
            try:
                with tarfile.open(fileobj=buffered, mode="r|", bufsize=_TAR_BUFFER, tarinfo=_LayerTarInfo) as tar:
                    for member in tar:
                        if on_entry is not None:
                            on_entry(member)
                        try:
                            unpacker.entry(member, tar)
                        except OSError as exc:
                            if exc.errno not in _ENTRY_ERRNOS:
                                raise
                            raise UnsafeLayer(f"layer {layer}: entry {member.name[:300]!r}: {exc.strerror}") from None
                        entries += 1
                buffered.read()  # the end-of-archive blocks and padding belong to the diff id too
            except (tarfile.TarError, EOFError, zstandard.ZstdError, gzip.BadGzipFile, _ISAL_ERROR) as exc:
                raise UnsafeLayer(f"layer {layer}: not a valid tar stream: {exc}") from None
            finally:
                reader.close()
            unpacker.finish()
        diff_id = "sha256:" + reader.hash.hexdigest()
        if expected_diff_id is not None and diff_id != expected_diff_id:
            raise UnsafeLayer(
                f"layer {layer}: uncompressed content has digest {diff_id}, the image config says {expected_diff_id}")
        return UnpackResult(diff_id=diff_id, tar_size=reader.size, entries=entries)
    finally:
        unpacker.close()
        os.close(root_fd)
