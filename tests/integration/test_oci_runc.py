"""Specs from the builder, run by a real OCI runtime (Debian's runc) on a busybox rootfs: runc accepts them and
the container's process sees what the spec says (uid, groups, capabilities, hostname, env, namespaces, seccomp,
read-only paths). Needs root, runc and busybox-static; every bundle, pinned namespace and cgroup is removed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cri import api as pb
from cri.oci import (
    LayeredFiles,
    NodeFacts,
    PodContext,
    PodFiles,
    SpecInputs,
    SpecOptions,
    build_container_spec,
    inspect_host,
)
from cri.oci.capabilities import CAPABILITY_BITS, DEFAULT_CAPABILITIES
from cri.oci.host import parse_mountinfo
from runtime.bundle import exec_process
from runtime.cgroups.paths import container_cgroup_path

RUNC = shutil.which("runc")
BUSYBOX = "/bin/busybox"  # Debian busybox-static: runs without a libc in the rootfs
TIMEOUT = 60

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(RUNC is None, reason="runc is not installed"),
    pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="busybox-static is not installed"),
]

BIT_OF = {name: bit for bit, name in CAPABILITY_BITS.items()}


def cap_mask(names: list[str] | tuple[str, ...]) -> int:
    return sum(1 << BIT_OF[n] for n in set(names))


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, close_fds=True, **kw)


@dataclass
class Pod:
    """A temporary pod: a bundle dir, pinned net/ipc/uts namespaces, a cgroup parent, runc's state dir."""

    dir: Path
    name: str
    pins: list[Path] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)

    @property
    def runc_root(self) -> Path:
        return self.dir / "runc"

    @property
    def cgroup_parent(self) -> str:
        return "/" + self.name

    def context(self) -> PodContext:
        files = self.dir / "files"
        return PodContext(
            sandbox_id=self.name,
            net_ns_path=str(self.dir / "ns/net"),
            ipc_ns_path=str(self.dir / "ns/ipc"),
            uts_ns_path=str(self.dir / "ns/uts"),
            files=PodFiles(hosts=str(files / "hosts"), resolv_conf=str(files / "resolv.conf"),
                           hostname=str(files / "hostname"), shm=str(files / "shm")),
        )

    def runc(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        assert RUNC is not None
        return run([RUNC, "--root", str(self.runc_root), *args], **kw)


def _make_rootfs(root: Path) -> None:
    for sub in ("bin", "etc", "proc", "sys", "dev", "tmp", "home/alice", "data"):
        (root / sub).mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin/busybox")
    for applet in ("sh", "id", "cat", "grep", "touch", "hostname", "env", "readlink", "sleep", "ls", "sed", "wc"):
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nwheel:x:10:root\nalice:x:1000:\nstaff:x:50:alice\n")


def _remove_cgroups(name: str) -> None:
    """runc removes the container's cgroups; the parents it made on the way are ours to remove."""
    for entry in parse_mountinfo():
        if entry.fs_type in ("cgroup", "cgroup2"):
            path = os.path.join(entry.mount_point, name)
            if os.path.isdir(path):
                for sub, _, _ in sorted(os.walk(path), key=lambda w: -len(w[0])):
                    os.rmdir(sub)


@pytest.fixture
def pod() -> Iterator[Pod]:
    name = "crisp-spec-" + uuid.uuid4().hex[:10]
    directory = Path(tempfile.mkdtemp(prefix=name + "-"))
    p = Pod(directory, name)
    try:
        (directory / "ns").mkdir()
        for kind in ("net", "ipc", "uts"):
            (directory / "ns" / kind).touch()
            p.pins.append(directory / "ns" / kind)
        done = run(["unshare", f"--net={p.pins[0]}", f"--ipc={p.pins[1]}", f"--uts={p.pins[2]}", "true"])
        assert done.returncode == 0, done.stderr
        files = directory / "files"
        (files / "shm").mkdir(parents=True)
        (files / "hosts").write_text("127.0.0.1 localhost\n10.1.2.3 crisp-pod\n")
        (files / "resolv.conf").write_text("nameserver 10.96.0.10\n")
        (files / "hostname").write_text("crisp-pod\n")
        yield p
    finally:
        for cid in p.containers:
            p.runc("delete", "--force", cid)
        for pin in p.pins:
            run(["umount", str(pin)])
        _remove_cgroups(name)
        shutil.rmtree(directory, ignore_errors=True)
    assert not directory.exists()
    assert not any(name in e.mount_point for e in parse_mountinfo())


def _sandbox(privileged: bool = False) -> pb.PodSandboxConfig:
    sandbox = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="pod", namespace="default", uid="u1"), hostname="crisp-pod"
    )
    sandbox.linux.security_context.privileged = privileged
    sandbox.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "80"
    return sandbox


def _bundle(pod: Pod, config: pb.ContainerConfig, sandbox: pb.PodSandboxConfig,
            image: dict[str, Any] | None = None) -> tuple[str, Path, dict[str, Any]]:
    cid = uuid.uuid4().hex[:16]
    bundle = pod.dir / "bundles" / cid
    root = bundle / "rootfs"
    _make_rootfs(root)
    privileged = config.linux.security_context.privileged
    node = NodeFacts.probe()
    spec = build_container_spec(
        SpecInputs(
            container_id=cid,
            config=config,
            sandbox_config=sandbox,
            image_config=image or {"Env": ["FOO=bar", "PATH=/bin"]},
            pod=pod.context(),
            node=node,
            rootfs_path=str(root),
            cgroup_path=container_cgroup_path(pod.cgroup_parent, cid),
            image_files=LayeredFiles([str(root)]),
            host=inspect_host(config, privileged=privileged),
            options=SpecOptions(restrict_oom_score_adj=not node.has_sys_resource),
        )
    )
    (bundle / "config.json").write_text(json.dumps(spec))
    return cid, bundle, spec


def _run_container(pod: Pod, config: pb.ContainerConfig, sandbox: pb.PodSandboxConfig,
                   image: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    cid, bundle, spec = _bundle(pod, config, sandbox, image)
    pod.containers.append(cid)
    done = pod.runc("run", "--bundle", str(bundle), cid, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"runc run failed ({done.returncode}): {done.stderr}\n{done.stdout}"
    return done.stdout, spec


REPORT = (
    "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); echo host=$(hostname); "
    "grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status; echo netns=$(readlink /proc/self/ns/net); "
    "env | sed -n 's/^/env:/p'; "
)


def _report(output: str) -> dict[str, str]:
    out: dict[str, str] = {}
    env: list[str] = []
    for line in output.splitlines():
        if line.startswith("env:"):
            env.append(line[4:])
        elif ":" in line and line.split(":")[0] in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                                                     "NoNewPrivs", "Seccomp"):
            key, value = line.split(":", 1)
            out[key] = value.strip()
        else:
            for part in line.split(" "):
                if "=" in part and not part.startswith("groups"):
                    key, value = part.split("=", 1)
                    out[key] = value
            if line.startswith("uid="):
                out["groups"] = line.split("groups=", 1)[1]
    out["env"] = "\n".join(env)
    return out


def test_runc_runs_a_default_container(pod: Pod) -> None:
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="default"),
        command=["/bin/sh", "-c"],
        args=[REPORT + "grep -E ' /proc/sys | /sys ' /proc/self/mountinfo; cat /proc/kcore | wc -c; "
              "cat /etc/hosts; cat /proc/sys/net/ipv4/ip_unprivileged_port_start"],
        envs=[pb.KeyValue(key="GREETING", value=b"hello world")],
        linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            namespace_options=pb.NamespaceOption(pid=pb.CONTAINER))),
    )
    output, spec = _run_container(pod, config, _sandbox())
    seen = _report(output)
    assert (seen["uid"], seen["gid"], seen["groups"]) == ("0", "0", "0 10")
    assert seen["host"] == "crisp-pod"
    assert int(seen["CapEff"], 16) == cap_mask(DEFAULT_CAPABILITIES)
    assert int(seen["CapBnd"], 16) == cap_mask(DEFAULT_CAPABILITIES)
    assert int(seen["CapInh"], 16) == 0 and int(seen["CapAmb"], 16) == 0
    assert (seen["NoNewPrivs"], seen["Seccomp"]) == ("0", "0")
    assert seen["netns"] == f"net:[{os.stat(pod.pins[0]).st_ino}]"
    env = seen["env"].splitlines()
    assert "GREETING=hello world" in env and "FOO=bar" in env and "PATH=/bin" in env
    assert "HOSTNAME=crisp-pod" in env and "HOME=/root" in env
    mountinfo = {line.split()[4]: line.split()[5] for line in output.splitlines() if line[:1].isdigit()
                 and len(line.split()) > 5 and line.split()[4] in ("/proc/sys", "/sys")}
    assert mountinfo["/proc/sys"].startswith("ro,") and mountinfo["/sys"].startswith("ro,")  # read-only paths
    assert "\n0\n" in output  # /proc/kcore is masked
    assert "10.1.2.3 crisp-pod" in output  # the pod's hosts file
    assert output.rstrip().endswith("80")  # the pod's sysctl, in the pod's network namespace
    assert spec["linux"]["cgroupsPath"] == f"/{pod.name}/crisp-{pod.containers[0]}"


def test_runc_runs_a_restricted_non_root_container(pod: Pod) -> None:
    data = pod.dir / "volume"
    data.mkdir()
    (data / "file").write_text("volume data\n")
    script = REPORT + (
        "touch /rootfs-write 2>/dev/null && echo rootfs=rw || echo rootfs=ro; "
        "touch /data/new 2>/dev/null && echo volume=rw || echo volume=ro; "
        "cat /data/file"
    )
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="restricted"),
        args=[script],
        mounts=[pb.Mount(container_path="/data", host_path=str(data), readonly=True)],
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(oom_score_adj=500),
            security_context=pb.LinuxContainerSecurityContext(
                run_as_username="alice",
                supplemental_groups=[3000],
                no_new_privs=True,
                readonly_rootfs=True,
                capabilities=pb.Capability(add_capabilities=["NET_ADMIN"], drop_capabilities=["MKNOD"]),
                seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault),
                namespace_options=pb.NamespaceOption(pid=pb.CONTAINER),
            ),
        ),
    )
    output, spec = _run_container(pod, config, _sandbox(), image={"Entrypoint": ["/bin/sh", "-c"]})
    seen = _report(output)
    assert (seen["uid"], seen["gid"], seen["groups"]) == ("1000", "1000", "1000 50 3000")  # id -G: primary first
    expected_bounding = [c for c in DEFAULT_CAPABILITIES if c != "CAP_MKNOD"] + ["CAP_NET_ADMIN"]
    assert int(seen["CapBnd"], 16) == cap_mask(expected_bounding)
    # runc sets the capabilities, then execve as a non-root user without ambient ones clears them
    assert int(seen["CapEff"], 16) == 0
    assert (seen["NoNewPrivs"], seen["Seccomp"]) == ("1", "2")
    assert "HOME=/home/alice" in seen["env"].splitlines()
    assert "rootfs=ro" in output and "volume=ro" in output and "volume data" in output
    assert spec["process"]["oomScoreAdj"] == 500


def test_runc_runs_a_privileged_container(pod: Pod) -> None:
    host_device = next(d for d in ("/dev/kmsg", "/dev/loop0", "/dev/vda", "/dev/tty1") if os.path.exists(d))
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="privileged"),
        command=["/bin/sh", "-c", REPORT + f"ls {host_device} && echo device=yes; "
                 "grep ' /sys ' /proc/self/mountinfo"],
        linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            privileged=True,
            seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault),
            namespace_options=pb.NamespaceOption(pid=pb.CONTAINER),
        )),
    )
    output, _ = _run_container(pod, config, _sandbox(privileged=True))
    seen = _report(output)
    node = NodeFacts.probe()
    assert int(seen["CapEff"], 16) == cap_mask(node.capabilities)
    assert seen["Seccomp"] == "0"  # privileged: no filter even though one was asked for
    assert "device=yes" in output
    sys_line = next(line for line in output.splitlines() if " /sys " in line)
    assert sys_line.split()[5].startswith("rw,")  # sysfs is writable


def test_runc_accepts_the_privileged_spec_only_in_a_privileged_pod(pod: Pod) -> None:
    from runtime.errors import InvalidArgument

    config = pb.ContainerConfig(command=["/bin/true"], linux=pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(privileged=True)))
    with pytest.raises(InvalidArgument):
        _bundle(pod, config, _sandbox(privileged=False))


def test_runc_exec_with_the_exec_process(pod: Pod) -> None:
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="sleeper"),
        command=["/bin/sleep", "60"],
        linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            run_as_user=pb.Int64Value(value=1000),
            seccomp=pb.SecurityProfile(),
            namespace_options=pb.NamespaceOption(pid=pb.CONTAINER))),
    )
    cid, bundle, spec = _bundle(pod, config, _sandbox())
    pod.containers.append(cid)
    # detached without a terminal, the container keeps runc's stdio: give it files, not pipes to wait on
    assert RUNC is not None
    with open(bundle / "stdio", "w+") as stdio:
        started = subprocess.run(
            [RUNC, "--root", str(pod.runc_root), "run", "--detach", "--bundle", str(bundle), cid],
            stdin=subprocess.DEVNULL, stdout=stdio, stderr=stdio, timeout=TIMEOUT, close_fds=True,
        )
        stdio.seek(0)
        assert started.returncode == 0, stdio.read()
    process = exec_process(spec["process"], ["/bin/sh", "-c", REPORT], tty=False, env=["EXTRA=1"])
    (bundle / "process.json").write_text(json.dumps(process))
    done = pod.runc("exec", "--process", str(bundle / "process.json"), cid, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    seen = _report(done.stdout)
    assert (seen["uid"], seen["gid"], seen["Seccomp"], seen["host"]) == ("1000", "1000", "2", "crisp-pod")
    assert "EXTRA=1" in seen["env"].splitlines()
    pod.runc("kill", cid, "KILL")
    assert re.search(r"net:\[\d+\]", seen["netns"])
