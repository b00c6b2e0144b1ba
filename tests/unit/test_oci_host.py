"""Gathering host facts for the spec builder, on this machine's real /proc, /dev and filesystem."""

from __future__ import annotations

import os
import resource
from pathlib import Path

from cri import api as pb
from cri.oci.host import (
    NodeFacts,
    devices_under,
    inspect_host,
    lookup_device,
    mount_containing,
    parse_mountinfo,
)


def test_node_facts_from_this_process() -> None:
    node = NodeFacts.probe()
    with open("/proc/self/status") as f:
        cap_eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    assert ("CAP_SYS_ADMIN" in node.capabilities) == bool(cap_eff >> 21 & 1)
    assert node.has_sys_resource == bool(cap_eff >> 24 & 1)
    assert node.oom_score_adj == int(Path("/proc/self/oom_score_adj").read_text())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert node.nofile == (soft, hard)
    assert node.arch == os.uname().machine and node.hostname


def test_facts_from_a_proc_dir(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self/status").write_text("CapEff:\t0000000000000001\n")
    (proc / "self/oom_score_adj").write_text("-5\n")
    node = NodeFacts.probe(str(proc))
    assert node.capabilities == ("CAP_CHOWN",) and node.oom_score_adj == -5
    assert not node.cgroup_namespaces  # this fake /proc has no self/ns/cgroup
    (proc / "self/ns").mkdir()
    (proc / "self/ns/cgroup").write_text("")
    assert NodeFacts.probe(str(proc)).cgroup_namespaces


def test_mountinfo_propagation(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "1 0 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n"
        "2 1 8:2 / /srv rw master:3 - ext4 /dev/sda2 rw\n"
        "3 2 0:40 / /srv/private rw - tmpfs tmpfs rw\n"
        "4 1 0:41 / /with\\040space rw shared:7 master:2 - tmpfs tmpfs rw\n"
    )
    entries = parse_mountinfo(str(info))
    assert [e.mount_point for e in entries] == ["/", "/srv", "/srv/private", "/with space"]

    def propagation(path: str) -> str:
        entry = mount_containing(path, entries)
        assert entry is not None
        return entry.propagation

    assert propagation("/var/lib") == "shared"
    assert propagation("/srv/data") == "slave"
    assert propagation("/srv") == "slave"
    assert propagation("/srv/private/x") == "private"
    assert propagation("/srvx") == "shared"  # not under /srv
    assert propagation("/with space/a") == "shared"


def test_inspect_host_mounts_devices_and_profiles(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    profile = tmp_path / "profile.json"
    profile.write_bytes(b'{"defaultAction": "SCMP_ACT_ALLOW"}')
    config = pb.ContainerConfig(
        mounts=[
            pb.Mount(container_path="/a", host_path=str(tmp_path / "link")),
            pb.Mount(container_path="/b", host_path=str(tmp_path / "missing")),
            pb.Mount(container_path="/c", host_path="relative"),
        ],
        devices=[
            pb.Device(host_path="/dev/null", container_path="/dev/null", permissions="rw"),
            pb.Device(host_path=str(profile), container_path="/dev/x", permissions="rw"),
            pb.Device(host_path="/dev/does-not-exist", container_path="/dev/y", permissions="rw"),
        ],
        linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(profile)))),
    )
    host = inspect_host(config, privileged=False)
    link = host.mounts[str(tmp_path / "link")]
    assert link.resolved == str(real) and not link.error
    assert link.propagation == mount_containing(str(real), parse_mountinfo()).propagation  # type: ignore[union-attr]
    assert host.mounts[str(tmp_path / "missing")].error == "does not exist"
    assert "absolute" in host.mounts["relative"].error
    null = host.devices["/dev/null"]
    st = os.stat("/dev/null")
    assert [(n.type, n.major, n.minor) for n in null.nodes] == [("c", os.major(st.st_rdev), os.minor(st.st_rdev))]
    assert host.devices[str(profile)].error == "is not a device node"
    assert host.devices["/dev/does-not-exist"].error == "does not exist"
    assert host.seccomp_profiles[str(profile)].data == profile.read_bytes()
    assert host.host_devices == ()


def test_inspect_host_reads_dev_only_for_privileged() -> None:
    host = inspect_host(pb.ContainerConfig(), privileged=True)
    paths = {d.path for d in host.host_devices}
    assert "/dev/null" in paths and "/dev/zero" in paths
    assert not any(p.startswith(("/dev/pts/", "/dev/shm/")) for p in paths) and "/dev/console" not in paths
    missing = pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref="/nonexistent/p.json")
    config = pb.ContainerConfig(linux=pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(seccomp=missing)))
    assert "No such file" in inspect_host(config, privileged=False).seccomp_profiles["/nonexistent/p.json"].error
    assert inspect_host(config, privileged=True).seccomp_profiles == {}  # privileged: no filter, nothing to read


def test_device_directory(tmp_path: Path) -> None:
    assert devices_under(str(tmp_path)) == []
    (tmp_path / "null").symlink_to("/dev/null")  # a symlink is not a device node
    assert lookup_device(str(tmp_path)).error == "is a directory without device nodes"
    dev = lookup_device("/dev")
    assert not dev.error and any(n.path == "/dev/null" for n in dev.nodes)
