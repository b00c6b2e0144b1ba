"""Who a container's process runs as: CRI run_as_user/run_as_group/run_as_username, the image's USER, the image's
/etc/passwd and /etc/group, supplemental groups with SupplementalGroupsPolicy Merge or Strict.

The image's files are read through an `ImageFiles` reader, so resolution works on an unmounted image (a stack of
overlay lower dirs: `LayeredFiles`) as well as on a plain directory or, in tests, a dict.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from runtime.errors import InvalidArgument

# runc refuses ids above this (the OCI spec allows uint32; the kernel reserves 2**32-1 and 2**32-2)
MAX_ID = 2**31 - 1
# /etc/passwd or /etc/group bigger than this is not read (a hostile image must not make crispd read gigabytes)
MAX_USER_FILE_BYTES = 16 << 20


class ImageFiles(Protocol):
    """Reads a file of the container image by its absolute path inside the image."""

    def read(self, path: str) -> bytes | None:
        """The file's bytes, or None when it does not exist (or is not a regular file)."""
        ...

    def resolve(self, path: str) -> str:
        """Where `path` lands in the image: its symlinks followed (inside the image), missing parts as written."""
        ...


@dataclass(frozen=True)
class StaticFiles:
    """An image's files given as a mapping of path -> content (tests, images without a rootfs)."""

    files: Mapping[str, bytes] = field(default_factory=dict)

    def read(self, path: str) -> bytes | None:
        return self.files.get(path)

    def resolve(self, path: str) -> str:
        return os.path.normpath("/" + path.lstrip("/"))


_MAX_SYMLINKS = 40
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
_WHITEOUT_PREFIX = ".wh."
_OPAQUE_MARKER = ".wh..wh..opq"


class LayeredFiles:
    """Reads files from the merged view of overlay layers without mounting them.

    `layers` are directories, topmost first (upper dir, then lower dirs top to bottom), as overlayfs stacks them.
    Whiteouts (a 0:0 character device or an AUFS-style `.wh.<name>` file) hide lower entries; an opaque
    directory (`trusted.overlay.opaque=y`, `user.overlay.opaque=y` or a `.wh..wh..opq` file) hides the lower
    layers' contents. Symlinks resolve inside the merged view, never outside it: `..` stops at its root.
    """

    def __init__(self, layers: Sequence[str], *, max_bytes: int = MAX_USER_FILE_BYTES) -> None:
        self.layers = tuple(layers)
        self.max_bytes = max_bytes
        # the layers each directory of the merged view is merged from, as found (`_layers_for_dir`): a reader
        # lives for one look at the layers (a spec's build), and each look at a path goes down from the root
        self._dir_layers: dict[tuple[str, ...], tuple[str, ...]] = {}

    def read(self, path: str) -> bytes | None:
        entry = self._resolve(path)
        if entry is None or not stat.S_ISREG(entry[2].st_mode):
            return None
        with open(os.path.join(entry[0], *entry[1]), "rb", opener=_nofollow_opener) as f:
            data = f.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise InvalidArgument(f"{path} in the image is larger than {self.max_bytes} bytes")
        return data

    def sources(self, path: str) -> tuple[str, ...] | None:
        """What makes up `path` of the merged view on the host: for a directory, its dir in every layer that
        contributes to it (topmost first, as overlayfs stacks them); for any other file, the one host path. None
        when it does not exist. Symlinks on the way resolve inside the merged view."""
        entry = self._resolve(path)
        if entry is None:
            return None
        layer, parts, st = entry
        if stat.S_ISDIR(st.st_mode):
            return tuple(os.path.join(top, *parts) for top in self._layers_for_dir(parts))
        return (os.path.join(layer, *parts),)

    def resolve(self, path: str) -> str:
        """Where `path` lands in the merged view: every symlink that exists followed inside it (dangling ones
        too), the parts that do not exist kept as written (as runc's SecureJoin resolves mount targets)."""
        pending = [p for p in path.split("/") if p not in ("", ".")]
        done: list[str] = []
        active: list[str] | None = self._root_layers()  # None: below something the image does not have
        links = 0
        while pending:
            name = pending.pop(0)
            if name == "..":
                if done:
                    done.pop()
                active = self._layers_for_dir(done)
                continue
            entry = self._lookup(active, done, name) if active is not None else None
            if entry is not None and stat.S_ISLNK(entry[1].st_mode):
                links += 1
                if links > _MAX_SYMLINKS:
                    raise InvalidArgument(f"{path} in the image: too many levels of symbolic links")
                target = os.readlink(os.path.join(entry[0], *done, name))
                if target.startswith("/"):
                    done = []
                    active = self._root_layers()
                pending = [p for p in target.split("/") if p not in ("", ".")] + pending
                continue
            done.append(name)
            active = self._layers_for_dir(done) if entry is not None and stat.S_ISDIR(entry[1].st_mode) else None
        return "/" + "/".join(done)

    def lstat(self, path: str) -> os.stat_result | None:
        """The entry at `path` (no symlink followed, the parents must be real dirs) in the merged view."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return os.stat(self.layers[0]) if self.layers else None
        active = self._layers_for_dir(parts[:-1])
        if not active:
            return None
        entry = self._lookup(active, parts[:-1], parts[-1])
        return None if entry is None else entry[1]

    # -- resolution

    def _resolve(self, path: str) -> tuple[str, list[str], os.stat_result] | None:
        """The topmost layer holding `path` of the merged view, the path's components as resolved, and its stat
        (not a symlink), or None. The root itself resolves to the topmost layer."""
        pending = [p for p in path.split("/") if p]
        done: list[str] = []
        # the layers in which the current directory (done) is merged, topmost first
        active = self._root_layers()
        links = 0
        while pending:
            name = pending.pop(0)
            if name == ".":
                continue
            if name == "..":
                if done:
                    done.pop()
                active = self._layers_for_dir(done)
                continue
            entry = self._lookup(active, done, name)
            if entry is None:
                return None
            layer, st = entry
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_SYMLINKS:
                    return None
                target = os.readlink(os.path.join(layer, *done, name))
                parts = [p for p in target.split("/") if p]
                if target.startswith("/"):
                    done = []
                    active = self._root_layers()
                pending = parts + pending
                continue
            if pending:
                if not stat.S_ISDIR(st.st_mode):
                    return None
                done.append(name)
                active = self._layers_for_dir(done)
                continue
            return layer, [*done, name], st
        if not active:
            return None
        return active[0], done, os.stat(os.path.join(active[0], *done))

    def _root_layers(self) -> list[str]:
        return self._layers_for_dir([])

    def _layers_for_dir(self, parts: list[str]) -> list[str]:
        """The layers that contribute to the directory `parts` of the merged view, topmost first: those of its
        parent that have it as a directory, down to the first that hides the layers below (a whiteout of it, a
        non-directory, an opaque directory). Each directory is looked at once per reader."""
        key = tuple(parts)
        found = self._dir_layers.get(key)
        if found is None:
            above = self._layers_for_dir(parts[:-1]) if parts else [x for x in self.layers if os.path.isdir(x)]
            merged: list[str] = []
            for layer in above:
                here = os.path.join(layer, *parts)
                try:
                    st = os.lstat(here)
                except OSError:
                    # absent in this layer: lower layers may still provide it, unless hidden by a whiteout
                    if parts and self._whiteout(layer, parts[:-1], parts[-1]):
                        break
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    break
                merged.append(layer)
                if self._opaque(here):
                    break
            found = self._dir_layers[key] = tuple(merged)
        return list(found)

    def _lookup(self, active: list[str], parts: list[str], name: str) -> tuple[str, os.stat_result] | None:
        for layer in active:
            try:
                st = os.lstat(os.path.join(layer, *parts, name))
            except OSError:
                if self._whiteout(layer, parts, name):
                    return None
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None  # overlay whiteout
            if name.startswith(_WHITEOUT_PREFIX):
                return None
            return layer, st
        return None

    @staticmethod
    def _whiteout(layer: str, parts: list[str], name: str) -> bool:
        return os.path.lexists(os.path.join(layer, *parts, _WHITEOUT_PREFIX + name))

    @staticmethod
    def _opaque(directory: str) -> bool:
        if os.path.lexists(os.path.join(directory, _OPAQUE_MARKER)):
            return True
        for attr in _OPAQUE_XATTRS:
            try:
                if os.getxattr(directory, attr, follow_symlinks=False) == b"y":
                    return True
            except OSError:
                continue  # not set, or not readable by this user (trusted.* needs CAP_SYS_ADMIN)
        return False


def _nofollow_opener(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)


# ---------------------------------------------------------------------------------------------- passwd, group


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _parse_id(text: str) -> int | None:
    text = text.strip()
    if not _is_number(text):
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def _records(data: bytes, fields_at_least: int) -> Iterator[list[str]]:
    """The colon-separated fields of each line of a passwd or group file that has `fields_at_least` of them;
    blank lines and comments are skipped."""
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            fields = line.split(":")
            if len(fields) >= fields_at_least:
                yield fields


def parse_passwd(data: bytes) -> list[PasswdEntry]:
    """/etc/passwd lines `name:password:uid:gid:gecos:home:shell`; comments and malformed lines are skipped."""
    entries = []
    for fields in _records(data, 4):
        uid, gid = _parse_id(fields[2]), _parse_id(fields[3])
        if not fields[0] or uid is None or gid is None:
            continue
        home = fields[5] if len(fields) > 5 else ""
        entries.append(PasswdEntry(fields[0], uid, gid, home))
    return entries


def parse_group(data: bytes) -> list[GroupEntry]:
    """/etc/group lines `name:password:gid:member,member`; comments and malformed lines are skipped."""
    entries = []
    for fields in _records(data, 3):
        gid = _parse_id(fields[2])
        if not fields[0] or gid is None:
            continue
        members = tuple(m.strip() for m in fields[3].split(",") if m.strip()) if len(fields) > 3 else ()
        entries.append(GroupEntry(fields[0], gid, members))
    return entries


class UserDatabase:
    """The image's /etc/passwd and /etc/group, read lazily through an ImageFiles reader (each at most once)."""

    def __init__(self, files: ImageFiles) -> None:
        self._files = files
        self._passwd: list[PasswdEntry] | None = None
        self._group: list[GroupEntry] | None = None

    def passwd(self) -> list[PasswdEntry]:
        if self._passwd is None:
            data = self._files.read("/etc/passwd")
            self._passwd = parse_passwd(data) if data is not None else []
        return self._passwd

    def group(self) -> list[GroupEntry]:
        if self._group is None:
            data = self._files.read("/etc/group")
            self._group = parse_group(data) if data is not None else []
        return self._group

    def user_by_name(self, name: str) -> PasswdEntry | None:
        return next((u for u in self.passwd() if u.name == name), None)

    def user_by_uid(self, uid: int) -> PasswdEntry | None:
        return next((u for u in self.passwd() if u.uid == uid), None)

    def group_by_name(self, name: str) -> GroupEntry | None:
        return next((g for g in self.group() if g.name == name), None)

    def groups_of(self, username: str) -> list[int]:
        """The gids of the groups that list `username` as a member (a group named like the user is its primary
        group, not a supplemental one)."""
        return [g.gid for g in self.group() if g.name != username and username in g.members]


# ---------------------------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class UserRequest:
    """The identity fields of a CRI LinuxContainerSecurityContext, with protobuf presence kept."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_username: str = ""
    supplemental_groups: tuple[int, ...] = ()
    strict_groups: bool = False  # SupplementalGroupsPolicy Strict (else Merge)


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    home: str


def _check_id(value: int, what: str) -> int:
    if value < 0 or value > MAX_ID:
        raise InvalidArgument(f"{what} {value} is out of range (0..{MAX_ID})")
    return value


def _parse_user_string(user: str) -> tuple[str, str | None]:
    if user.count(":") > 1:
        raise InvalidArgument(f"invalid user {user!r}: expected user, uid, user:group or uid:gid")
    name, sep, group = user.partition(":")
    if not name or (sep and not group):
        raise InvalidArgument(f"invalid user {user!r}: expected user, uid, user:group or uid:gid")
    return name, group if sep else None


def resolve_user(request: UserRequest, image_user: str, db: UserDatabase) -> ResolvedUser:
    """The uid, gid and supplemental groups of a container's first process, as containerd computes them.

    The user comes from run_as_username, else run_as_user, else the image's USER (`uid`, `name`, `uid:gid`,
    `name:group`, `uid:group`, `name:gid`), else root. A numeric uid absent from /etc/passwd runs with gid 0; a
    name must exist in /etc/passwd (and a group name in /etc/group), else INVALID_ARGUMENT. run_as_group
    overrides the gid and needs run_as_user or run_as_username. The additional gids are the primary gid, the
    groups /etc/group lists the user in (Merge policy only) and the CRI supplemental groups, sorted.
    """
    if request.run_as_group is not None and request.run_as_user is None and not request.run_as_username:
        raise InvalidArgument("run_as_group is set without run_as_user or run_as_username")
    if request.run_as_user is not None:
        _check_id(request.run_as_user, "run_as_user")
    if request.run_as_group is not None:
        _check_id(request.run_as_group, "run_as_group")

    if request.run_as_username:
        user_part, group_part = request.run_as_username, None
        if ":" in user_part:
            raise InvalidArgument(f"run_as_username {user_part!r} must not contain ':'")
    elif request.run_as_user is not None:
        user_part, group_part = str(request.run_as_user), None
    elif image_user:
        user_part, group_part = _parse_user_string(image_user)
    else:
        user_part, group_part = "0", None

    if _is_number(user_part):
        uid = _check_id(int(user_part), "uid") if len(user_part) < 12 else _check_id(MAX_ID + 1, "uid")
        entry = db.user_by_uid(uid)
        gid = entry.gid if entry is not None else 0
        username = entry.name if entry is not None else None
        home = entry.home if entry is not None and entry.home else "/"
    else:
        entry = db.user_by_name(user_part)
        if entry is None:
            raise InvalidArgument(f"user {user_part!r} is not in the image's /etc/passwd")
        uid, gid, username, home = entry.uid, entry.gid, entry.name, entry.home or "/"

    if group_part is not None:
        if _is_number(group_part):
            gid = _check_id(int(group_part), "gid") if len(group_part) < 12 else _check_id(MAX_ID + 1, "gid")
        else:
            group = db.group_by_name(group_part)
            if group is None:
                raise InvalidArgument(f"group {group_part!r} is not in the image's /etc/group")
            gid = group.gid
    if request.run_as_group is not None:
        gid = request.run_as_group

    gids = {gid}
    if not request.strict_groups and username is not None:
        gids.update(db.groups_of(username))
    for extra in request.supplemental_groups:
        gids.add(_check_id(extra, "supplemental group"))
    return ResolvedUser(uid=uid, gid=gid, additional_gids=tuple(sorted(gids)), home=home)
