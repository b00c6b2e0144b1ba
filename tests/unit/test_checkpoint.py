"""The pure parts of checkpointing: which mounts and namespaces CRIU is told are external, its command line, and the
archive (the rootfs diff from an overlay upper dir, the metadata, the atomic write)."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from runtime import errors
from runtime.checkpoint import archive, criu
from runtime.fstree import remove_tree
from runtime.procs import descendants

# a container's mountinfo as the built-in executor leaves it (pivot_root done): the overlay root, proc with a
# read-only bind of /proc/sys on itself, a tmpfs /dev, the pod's files and /dev/shm bound from the host, a masked
# file (/dev/null bound from the host's devtmpfs), cgroup2
MOUNTINFO = """\
600 500 0:90 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
601 600 0:91 / /proc rw,nosuid,nodev,noexec - proc proc rw
602 601 0:91 /sys /proc/sys ro,nosuid,nodev,noexec - proc proc rw
603 600 0:92 / /dev rw,nosuid - tmpfs tmpfs rw,mode=755
604 603 0:93 / /dev/pts rw - devpts devpts rw
605 603 0:60 / /dev/shm rw,nosuid,nodev,noexec - tmpfs shm rw,size=65536k
606 600 8:1 /var/lib/crisp/sandboxes/abc/hosts /etc/hosts rw - ext4 /dev/sda1 rw
607 600 8:1 /var/lib/crisp/sandboxes/abc/resolv\\040conf /etc/resolv\\040conf rw - ext4 /dev/sda1 rw
608 601 0:5 /null /proc/kcore rw,nosuid - devtmpfs udev rw
609 600 0:26 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw
"""


def test_external_mounts_are_binds_of_filesystems_not_mounted_whole() -> None:
    mounts = criu.parse_mountinfo(MOUNTINFO)
    assert [m.point for m in mounts][:3] == ["/", "/proc", "/proc/sys"]
    assert criu.external_mounts(mounts) == ["/etc/hosts", "/etc/resolv conf", "/proc/kcore"]


def test_dump_argv_leaves_the_tree_running_and_names_externals() -> None:
    argv = criu.dump_argv("/usr/sbin/criu", 42, "/s/checkpoint", "/s", namespaces=[("net", 7), ("pid", 9)],
                          mounts=["/etc/hosts"])
    assert argv[:3] == ["/usr/sbin/criu", "dump", "--tree"] and "--leave-running" in argv
    assert argv[argv.index("--images-dir") + 1] == "/s/checkpoint" and argv[argv.index("--work-dir") + 1] == "/s"
    externals = [argv[i + 1] for i, a in enumerate(argv) if a == "--external"]
    assert externals == ["net[7]:extRootNetNS", "pid[9]:extRootPidNS", "mnt[/etc/hosts]:/etc/hosts"]


def test_namespace_externals_are_the_joined_net_and_pid(tmp_path: Path) -> None:
    net, ipc = tmp_path / "net", tmp_path / "ipc"
    net.touch()
    ipc.touch()
    spec = [{"type": "network", "path": str(net)}, {"type": "ipc", "path": str(ipc)}, {"type": "mount"},
            {"type": "pid"}]
    assert criu.namespace_externals(spec) == [("net", net.stat().st_ino)]
    with pytest.raises(errors.FailedPrecondition, match="network namespace is gone"):
        criu.namespace_externals([{"type": "network", "path": str(tmp_path / "gone")}])


def test_rootfs_diff_holds_the_upper_dir(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "tmp").mkdir(parents=True)
    (upper / "tmp" / "marker").write_text("hello\n")
    (upper / "link").symlink_to("/tmp/marker")
    deep = upper
    for _ in range(1200):  # deeper than Python's recursion limit
        deep = deep / "d"
        deep.mkdir()
    try:
        deleted = archive.write_rootfs_diff(str(upper), str(tmp_path / "diff.tar"))
    finally:
        remove_tree(upper)  # pytest's own cleanup recurses per level
    assert deleted == []
    with tarfile.open(tmp_path / "diff.tar") as tar:
        names = tar.getnames()
        marker = tar.extractfile("tmp/marker")
        assert marker is not None and marker.read() == b"hello\n"
        assert tar.getmember("link").linkname == "/tmp/marker"
    assert "/".join(["d"] * 1200) in names


@pytest.mark.skipif(os.geteuid() != 0, reason="a whiteout is a 0:0 character device: mknod needs root")
def test_whiteouts_are_deleted_files_not_tar_entries(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "bin").mkdir(parents=True)
    os.mknod(upper / "bin" / "false", 0o600 | 0o020000, os.makedev(0, 0))
    deleted = archive.write_rootfs_diff(str(upper), str(tmp_path / "diff.tar"))
    assert deleted == ["/bin/false"]
    with tarfile.open(tmp_path / "diff.tar") as tar:
        assert tar.getnames() == ["bin"]


def test_archive_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    (staging / "checkpoint").mkdir(parents=True)
    (staging / "checkpoint" / "inventory.img").write_bytes(b"\0")
    config = archive.config_dump(container_id="c1", name="app", image_name="busybox", image_ref="sha256:x",
                                 runtime="builtin", created_ns=1_700_000_000_123_456_789,
                                 checkpointed_ns=1_700_000_001_000_000_000)
    assert config["createdTime"] == "2023-11-14T22:13:20.123456789Z"
    archive.write_metadata(str(staging), config=config, spec={"ociVersion": "1.0.2"}, deleted=["/x"])
    out = tmp_path / "out"
    out.mkdir()
    archive.write_archive(str(staging), str(out / "c.tar"))
    with tarfile.open(out / "c.tar") as tar:
        assert {"checkpoint", "checkpoint/inventory.img", "config.dump", "spec.dump", "deleted.files"} <= set(
            tar.getnames())
        dumped = tar.extractfile("config.dump")
        assert dumped is not None and json.load(dumped)["id"] == "c1"


def test_a_failed_archive_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staging = tmp_path / "staging"
    (staging / "checkpoint").mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(OSError, match="No space"):
        archive.write_archive(str(staging), str(out / "c.tar"))
    assert list(out.iterdir()) == []


def test_open_files_outside_the_namespace_are_external(tmp_path: Path) -> None:
    """This process's own files, seen as a container's whose mount namespace has none of their mounts."""
    held = tmp_path / "held"
    held.write_text("x")
    with open(held) as f:
        with open(f"/proc/self/fdinfo/{f.fileno()}") as info:
            mnt_id = int(dict(line.split(":", 1) for line in info)["mnt_id"])
        key = f"file[{mnt_id:x}:{held.stat().st_ino:x}]"
        assert key in criu.external_files([os.getpid()], mount_ids=set())
        assert key not in criu.external_files([os.getpid()], mount_ids={mnt_id})
    assert os.getpid() in descendants(os.getppid())  # the tree a dump takes


def test_an_oci_runtime_that_cannot_checkpoint_is_named_with_its_words(tmp_path: Path) -> None:
    runtime = ["sh", "-c", 'echo "unknown command $0" >&2; exit 1']
    with pytest.raises(errors.FailedPrecondition, match=r"sh checkpoint failed \(status 1\): unknown command "
                                                        "checkpoint"):
        criu.runtime_checkpoint(runtime, "c1", str(tmp_path), str(tmp_path), timeout=30)
