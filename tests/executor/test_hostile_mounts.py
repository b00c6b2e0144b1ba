"""Mounts that try to reach into /proc, and a /proc that is not one: the executor must see through both.

An image symlink `/procl -> /proc` turns a volume at `/procl/...` into a mount inside the container's procfs; a
volume over `/proc/1/fd` (the init's own fd dir) would then redirect every `/proc/self/fd/N` the init resolves
after pivot_root (masking binds, read-only binds, the start fifo), and a volume over `/proc/sys/...` its sysctl
writes. The destination is checked where it lands (as runc does), and after pivot_root the init never resolves
anything through the container's /proc.
"""

from __future__ import annotations

import os
import posixpath
import subprocess
from pathlib import Path

import pytest

from tests.executor.conftest import Bundles, Runtime
from tests.executor.rootfs import make_spec

pytestmark = pytest.mark.root

BB = "/bin/busybox"


def sh(script: str) -> list[str]:
    return [BB, "sh", "-c", script]


def _decoy_volume(tmp_path: Path) -> Path:
    """A host dir shaped like /proc/<pid>/fd: every fd number a symlink to a decoy of the attacker's."""
    volume = tmp_path / "volume"
    volume.mkdir()
    for n in range(64):
        (volume / str(n)).symlink_to("/decoy")
    (volume / "marker").write_text("volume\n")
    return volume


@pytest.mark.parametrize("destination", ["/procl/self/fd", "/procl/1/fd", "/procl/sys/kernel",
                                         "/procl/../procl/sys/net"])
def test_a_volume_through_a_symlink_into_proc_is_refused(runtimes: list[Runtime], bundles: Bundles,
                                                         tmp_path: Path, destination: str) -> None:
    volume = _decoy_volume(tmp_path)
    # runc judges the destination where it lands too; crun 1.8 does not (it mounts the volume inside /proc)
    for runtime in [r for r in runtimes if r.name in ("crisp", "runc")]:
        spec = make_spec(sh(f"{BB} ls /proc/1/fd /proc/sys/kernel /proc/sys/net; {BB} cat /proc/keys"))
        spec["mounts"].append({"destination": destination, "type": "bind", "source": str(volume),
                               "options": ["rbind", "rw"]})
        bundle = bundles.make(spec)
        (bundle / "rootfs/procl").symlink_to("/proc")
        (bundle / "rootfs/decoy").mkdir()
        result = runtime.run(bundle)
        # the volume never lands in the container's procfs: the container is not made at all
        assert result.create != 0, (runtime.name, result.out, result.err)
        assert "marker" not in result.out
        assert "proc" in result.err, (runtime.name, result.err)
        if runtime.name == "crisp":
            written = posixpath.normpath(destination)  # the spec's paths are taken clean
            assert f"mount on {written} (through a symlink: it lands on /proc/" in result.err, result.err
        assert str(volume) not in Path("/proc/self/mountinfo").read_text()


def test_an_allowed_proc_file_through_a_symlink_is_still_allowed(builtin: Runtime, bundles: Bundles,
                                                                 tmp_path: Path) -> None:
    """What runc lets through (lxcfs's files) is judged where it lands too: /procl/meminfo is /proc/meminfo."""
    source = tmp_path / "meminfo"
    source.write_text("MemTotal: 42 kB\n")
    spec = make_spec(sh(f"{BB} cat /proc/meminfo"))
    spec["mounts"].append({"destination": "/procl/meminfo", "type": "bind", "source": str(source),
                           "options": ["bind", "ro"]})
    bundle = bundles.make(spec)
    (bundle / "rootfs/procl").symlink_to("/proc")
    result = builtin.run(bundle)
    assert result.create == 0 and result.exit == 0, result.err
    assert result.out == "MemTotal: 42 kB\n"


def test_a_fake_proc_redirects_nothing(builtin: Runtime, bundles: Bundles, tmp_path: Path) -> None:
    """A spec without a proc mount leaves the image's /proc dir in place: a plain dir whose self/fd/N are the
    attacker's symlinks and whose sys/ are plain files. Masking, read-only paths, sysctls and the start fifo must
    still reach the real objects."""
    netns = f"crisp-t-fakeproc-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        spec = make_spec(sh(f"{BB} cat /secret; echo x > /ro/file || echo RO-OK; {BB} ls /decoy"),
                         linux_maskedPaths=["/secret"], linux_readonlyPaths=["/ro"],
                         linux_sysctl={"net.ipv4.ip_forward": "1"})
        spec["mounts"] = [m for m in spec["mounts"] if m["type"] != "proc"]
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
        spec["linux"]["namespaces"].append({"type": "network", "path": f"/run/netns/{netns}"})
        bundle = bundles.make(spec)
        rootfs = bundle / "rootfs"
        fake_fd = rootfs / "proc/self/fd"
        fake_fd.mkdir(parents=True)
        for n in range(64):
            (fake_fd / str(n)).symlink_to("/decoy")
        (rootfs / "proc/1").symlink_to("self")
        (rootfs / "proc/thread-self").symlink_to("self")
        fake_sysctl = rootfs / "proc/sys/net/ipv4/ip_forward"
        fake_sysctl.parent.mkdir(parents=True)
        fake_sysctl.write_text("fake\n")
        (rootfs / "decoy").mkdir()
        (rootfs / "secret").write_text("the secret\n")
        (rootfs / "ro").mkdir()
        result = builtin.run(bundle)
        assert result.create == 0 and result.exit == 0, (result.out, result.err)
        assert "the secret" not in result.out  # masked: /dev/null over it
        assert "RO-OK" in result.out
        assert fake_sysctl.read_text() == "fake\n"  # the sysctl went to the real procfs...
        real = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/sys/net/ipv4/ip_forward"],
                              capture_output=True, text=True, check=True).stdout
        assert real == "1\n"  # ...of the container's network namespace
        assert list((rootfs / "decoy").iterdir()) == []
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False)


def test_a_dangling_symlink_mount_target_is_made_inside_the_root(runtimes: list[Runtime], bundles: Bundles,
                                                                 tmp_path: Path) -> None:
    """A volume on a symlink whose target does not exist: the target is made inside the root (runc does so)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "data").write_text("volume\n")
    for runtime in [r for r in runtimes if r.name in ("crisp", "runc")]:
        spec = make_spec(sh(f"{BB} cat /data/data /rel/sub/data"))
        for dest in ("/data", "/rel/sub"):
            spec["mounts"].append({"destination": dest, "type": "bind", "source": str(volume),
                                   "options": ["rbind", "ro"]})
        bundle = bundles.make(spec)
        rootfs = bundle / "rootfs"
        (rootfs / "data").symlink_to("/srv/crisp-dangling/data")
        (rootfs / "rel").symlink_to("../../../../../crisp-dangling-rel")
        result = runtime.run(bundle)
        assert result.create == 0 and result.exit == 0, (runtime.name, result.err)
        assert result.out == "volume\nvolume\n"
        assert (rootfs / "srv/crisp-dangling/data").is_dir() and (rootfs / "crisp-dangling-rel/sub").is_dir()
        assert not Path("/srv/crisp-dangling").exists() and not Path("/crisp-dangling-rel").exists()


def test_a_working_dir_through_a_dangling_symlink_is_made_inside_the_root(builtin: Runtime, bundles: Bundles) -> None:
    """(runc 1.1 fails on it: `mkdir /app: file exists`; crispd makes it in the writable layer at create.)"""
    bundle = bundles.make(make_spec(sh(f"{BB} pwd"), process_cwd="/app/bin"))
    rootfs = bundle / "rootfs"
    (rootfs / "app").symlink_to("/srv/crisp-dangling-app")
    result = builtin.run(bundle)
    assert result.create == 0 and result.exit == 0, result.err
    assert result.out == "/srv/crisp-dangling-app/bin\n"
    assert (rootfs / "srv/crisp-dangling-app/bin").is_dir()
    assert not Path("/srv/crisp-dangling-app").exists()
