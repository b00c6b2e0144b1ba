"""Reading the image's /etc/passwd and /etc/group: parsing, and LayeredFiles over unmounted overlay layers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cri.oci.user import GroupEntry, LayeredFiles, PasswdEntry, UserDatabase, parse_group, parse_passwd
from runtime.errors import InvalidArgument
from tests.unit.oci_support import GROUP, PASSWD


def test_parse_passwd_and_group() -> None:
    users = parse_passwd(PASSWD)
    assert [u.name for u in users] == ["root", "daemon", "alice", "bob"]  # comment and broken line skipped
    assert users[2] == PasswdEntry("alice", 1000, 1000, "/home/alice")
    groups = parse_group(GROUP)
    assert GroupEntry("staff", 50, ("alice", "bob")) in groups
    assert parse_passwd(b"x:x:-1:0::/:\ny:x:99999999999:0::/:\nz:x:1:notanumber::/:\n") == []


def test_supplemental_groups_exclude_the_group_named_like_the_user() -> None:
    db = UserDatabase(LayeredFiles([]))
    assert db.passwd() == [] and db.group() == []
    files = {"/etc/group": b"alice:x:1000:alice\nstaff:x:50:alice\n"}

    class Files:
        reads: list[str] = []

        def read(self, path: str) -> bytes | None:
            self.reads.append(path)
            return files.get(path)

    reader = Files()
    db = UserDatabase(reader)
    assert db.groups_of("alice") == [50]
    assert db.groups_of("alice") == [50]
    assert reader.reads == ["/etc/group"]  # read once, and /etc/passwd not at all


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_layered_files_topmost_wins(tmp_path: Path) -> None:
    upper, mid, low = tmp_path / "upper", tmp_path / "mid", tmp_path / "low"
    for d in (upper, mid, low):
        d.mkdir()
    _write(low / "etc/passwd", "low")
    _write(low / "etc/group", "low group")
    _write(mid / "etc/passwd", "mid")
    files = LayeredFiles([str(upper), str(mid), str(low)])
    assert files.read("/etc/passwd") == b"mid"
    assert files.read("/etc/group") == b"low group"
    assert files.read("/etc/shadow") is None
    assert files.read("/etc") is None  # a directory is not a file


def test_layered_files_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    upper, low = tmp_path / "upper", tmp_path / "low"
    _write(low / "etc/passwd", "low")
    _write(low / "etc/group", "low")
    _write(low / "var/x", "low")
    _write(upper / "etc/.wh.passwd", "")  # AUFS-style whiteout
    _write(upper / "var/.wh..wh..opq", "")  # AUFS-style opaque dir
    files = LayeredFiles([str(upper), str(low)])
    assert files.read("/etc/passwd") is None
    assert files.read("/etc/group") == b"low"
    assert files.read("/var/x") is None
    assert files.read("/etc/.wh.passwd") is None


def test_layered_files_directory_replaced_by_a_file(tmp_path: Path) -> None:
    upper, low = tmp_path / "upper", tmp_path / "low"
    _write(low / "etc/passwd", "low")
    _write(upper / "etc", "a file now")
    assert LayeredFiles([str(upper), str(low)]).read("/etc/passwd") is None


def test_layered_files_symlinks_stay_inside(tmp_path: Path) -> None:
    upper, low = tmp_path / "upper", tmp_path / "low"
    _write(low / "data/passwd", "real")
    (upper / "etc").mkdir(parents=True)
    os.symlink("/data/passwd", upper / "etc/passwd")  # absolute: inside the image, not the host
    os.symlink("../../../../../data/passwd", upper / "etc/group")  # .. stops at the image's root
    os.symlink("/etc/passwd", upper / "etc/hostfile")
    _write(tmp_path / "host-secret", "host")
    os.symlink(str(tmp_path / "host-secret"), upper / "etc/escape")
    os.symlink("loop", upper / "etc/loop")
    files = LayeredFiles([str(upper), str(low)])
    assert files.read("/etc/passwd") == b"real"
    assert files.read("/etc/group") == b"real"
    assert files.read("/etc/hostfile") == b"real"
    assert files.read("/etc/escape") is None  # the host path does not exist inside the image
    assert files.read("/etc/loop") is None
    # a directory symlink in a lower layer
    os.symlink("data", low / "conf")
    assert files.read("/conf/passwd") == b"real"


def test_layered_files_sources_of_a_directory_and_a_file(tmp_path: Path) -> None:
    top, mid, low = tmp_path / "top", tmp_path / "mid", tmp_path / "low"
    _write(low / "etc/a", "low")
    _write(low / "etc/sub/x", "low")
    _write(mid / "etc/b", "mid")
    _write(top / "other/c", "top")
    (low / "only").mkdir()
    _write(top / "etc/sub/.wh..wh..opq", "")  # an opaque dir: the layers below it do not count
    os.symlink("../../../etc", top / "other/link")
    files = LayeredFiles([str(top), str(mid), str(low)])
    assert files.sources("/") == (str(top), str(mid), str(low))
    etc = (str(top / "etc"), str(mid / "etc"), str(low / "etc"))
    assert files.sources("etc") == etc
    assert files.sources("other/link") == etc  # resolved inside the image
    assert files.sources("etc/sub") == (str(top / "etc/sub"),)
    assert files.sources("/etc/a") == (str(low / "etc/a"),)
    assert files.sources("only") == (str(low / "only"),)
    assert files.sources("etc/a/below") is None
    assert files.sources("missing") is None


def test_layered_files_size_limit(tmp_path: Path) -> None:
    _write(tmp_path / "etc/passwd", "x" * 100)
    with pytest.raises(InvalidArgument, match="larger"):
        LayeredFiles([str(tmp_path)], max_bytes=10).read("/etc/passwd")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, trusted.* xattrs)")
def test_layered_files_overlay_whiteouts(tmp_path: Path) -> None:
    upper, low = tmp_path / "upper", tmp_path / "low"
    _write(low / "etc/passwd", "low")
    _write(low / "etc/group", "low")
    _write(low / "opt/x", "low")
    (upper / "etc").mkdir(parents=True)
    (upper / "opt").mkdir()
    os.mknod(upper / "etc/passwd", 0o600 | 0o020000, os.makedev(0, 0))  # overlayfs whiteout: char 0:0
    os.setxattr(upper / "opt", "trusted.overlay.opaque", b"y")
    files = LayeredFiles([str(upper), str(low)])
    assert files.read("/etc/passwd") is None
    assert files.read("/etc/group") == b"low"
    assert files.read("/opt/x") is None


def test_layered_files_resolve_follows_symlinks_inside_the_merged_view(tmp_path: Path) -> None:
    upper, low = tmp_path / "upper", tmp_path / "low"
    (low / "srv").mkdir(parents=True)
    upper.mkdir()
    os.symlink("/proc", low / "procl")
    os.symlink("../../../../../../etc", low / "up")  # `..` stops at the root of the merged view
    os.symlink("srv/missing/deeper", low / "dangling")
    os.symlink("loop", low / "loop")
    os.mknod(upper / "srv", 0o020000, 0)  # a whiteout in the upper layer hides the lower dir
    files = LayeredFiles([str(upper), str(low)])
    assert files.resolve("/procl/self/fd") == "/proc/self/fd"
    assert files.resolve("/up/passwd") == "/etc/passwd"
    assert files.resolve("/dangling/x/../y") == "/srv/missing/deeper/y"
    assert files.resolve("/a/./b/../c") == "/a/c"
    with pytest.raises(InvalidArgument, match="too many levels of symbolic links"):
        files.resolve("/loop/x")
    assert files.lstat("/srv") is None and files.lstat("/procl") is not None
    assert LayeredFiles([str(low)]).lstat("/srv") is not None


def test_layered_files_merge_each_directory_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader finds the layers each directory of the merged view is merged from once (CreateContainer reads
    /etc/passwd and /etc/group and resolves mount targets through one reader; each look goes down from the root),
    and its answers stay those of a fresh reader."""
    upper, low = tmp_path / "upper", tmp_path / "low"
    _write(low / "etc" / "passwd", "root:x:0:0::/root:/bin/sh\n")
    _write(low / "etc" / "group", "root:x:0:\n")
    _write(upper / "etc" / "hostname", "h\n")
    opaque_looks: list[str] = []
    real_lexists = os.path.lexists

    def lexists(path: str) -> bool:
        if path.endswith("/.wh..wh..opq"):  # a directory's opaque marker: looked for as its layers are merged
            opaque_looks.append(path.removesuffix("/.wh..wh..opq"))
        return real_lexists(path)

    reader = LayeredFiles([str(upper), str(low)])
    monkeypatch.setattr(os.path, "lexists", lexists)
    assert reader.read("/etc/passwd") == b"root:x:0:0::/root:/bin/sh\n"
    assert reader.read("/etc/group") == b"root:x:0:\n"
    assert reader.resolve("/etc/hostname") == "/etc/hostname"
    assert reader.sources("/etc") == (str(upper / "etc"), str(low / "etc"))
    monkeypatch.undo()
    assert sorted(opaque_looks) == sorted(str(d) for d in (upper, low, upper / "etc", low / "etc"))
    fresh = LayeredFiles([str(upper), str(low)])
    assert [fresh.read("/etc/group"), fresh.resolve("/etc/hostname")] == [b"root:x:0:\n", "/etc/hostname"]
