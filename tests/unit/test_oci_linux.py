"""The Linux parts of the OCI spec: mounts, masked/read-only paths, devices, namespaces, hostname, cgroups path,
resources, sysctls, annotations, privileged; and the spec's structure against a compact runtime-spec schema."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cri import api as pb
from cri.oci.host import DeviceLookup, DeviceNode, HostPaths, MountSource
from cri.oci.mounts import DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, ImageVolume
from cri.oci.spec import SpecOptions
from cri.oci.userns import PodUserns, pod_userns
from runtime.bundle import IDMAP_ANNOTATION, OVERLAY_ANNOTATION, Overlay
from runtime.errors import FailedPrecondition, InvalidArgument, Unimplemented
from tests.unit.oci_schema import check_spec
from tests.unit.oci_support import NODE, POD, build, container_config, inputs, replace, sandbox_config


def _sc(**fields: Any) -> pb.LinuxContainerConfig:
    return pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(**fields))


def _privileged_sandbox() -> pb.PodSandboxConfig:
    sandbox = sandbox_config()
    sandbox.linux.security_context.privileged = True
    return sandbox


def _mounts_by_dest(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["destination"]: m for m in spec["mounts"]}


def _host(*sources: MountSource, **kw: Any) -> HostPaths:
    return HostPaths(mounts={s.host_path: s for s in sources}, **kw)


# ---------------------------------------------------------------------------------------------- mounts


def test_default_mounts() -> None:
    mounts = _mounts_by_dest(build())
    assert mounts["/proc"]["type"] == "proc"
    assert mounts["/dev"]["type"] == "tmpfs"
    assert mounts["/dev/pts"]["type"] == "devpts" and "newinstance" in mounts["/dev/pts"]["options"]
    assert mounts["/dev/mqueue"]["type"] == "mqueue"
    assert mounts["/sys"]["type"] == "sysfs" and "ro" in mounts["/sys"]["options"]
    assert mounts["/sys/fs/cgroup"]["type"] == "cgroup" and "ro" in mounts["/sys/fs/cgroup"]["options"]
    # the pod's shm dir replaces the default /dev/shm tmpfs
    assert mounts["/dev/shm"] == {
        "destination": "/dev/shm", "type": "bind", "source": POD.files.shm, "options": ["rbind", "rprivate", "rw"]
    }
    assert "/run" not in mounts


def test_shm_tmpfs_when_the_pod_has_none() -> None:
    pod = replace(POD, files=replace(POD.files, shm=""))
    assert _mounts_by_dest(build(pod=pod))["/dev/shm"]["type"] == "tmpfs"


def test_host_ipc_binds_the_hosts_shm() -> None:
    sandbox = sandbox_config()
    sandbox.linux.security_context.namespace_options.ipc = pb.NODE
    assert _mounts_by_dest(build(sandbox=sandbox))["/dev/shm"]["source"] == "/dev/shm"


def test_pod_files_bound_unless_a_cri_mount_targets_them() -> None:
    mounts = _mounts_by_dest(build())
    assert mounts["/etc/hosts"]["source"] == POD.files.hosts
    assert mounts["/etc/resolv.conf"]["source"] == POD.files.resolv_conf
    assert mounts["/etc/hostname"]["source"] == POD.files.hostname
    assert mounts["/etc/hosts"]["options"] == ["rbind", "rprivate", "rw"]
    config = container_config(mounts=[pb.Mount(container_path="/etc/hosts", host_path="/var/lib/kubelet/hosts")])
    spec = build(config, host=_host(MountSource("/var/lib/kubelet/hosts", "/var/lib/kubelet/hosts")))
    hosts = [m for m in spec["mounts"] if m["destination"] == "/etc/hosts"]
    assert hosts == [{"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/kubelet/hosts",
                      "options": ["rbind", "rprivate", "rw"]}]


def test_readonly_rootfs() -> None:
    spec = build(container_config(linux=_sc(readonly_rootfs=True)))
    assert spec["root"] == {"path": "/run/crisp/containers/c1/rootfs", "readonly": True}
    mounts = _mounts_by_dest(spec)
    assert mounts["/etc/hosts"]["options"][-1] == "ro" and mounts["/etc/resolv.conf"]["options"][-1] == "ro"
    assert mounts["/dev/shm"]["options"][-1] == "rw"  # shm stays writable
    assert build()["root"]["readonly"] is False


@pytest.mark.parametrize(
    ("propagation", "host_propagation", "option", "rootfs"),
    [
        (pb.PROPAGATION_PRIVATE, "private", "rprivate", None),
        (pb.PROPAGATION_HOST_TO_CONTAINER, "slave", "rslave", "rslave"),
        (pb.PROPAGATION_HOST_TO_CONTAINER, "shared", "rslave", "rslave"),
        (pb.PROPAGATION_BIDIRECTIONAL, "shared", "rshared", "rshared"),
    ],
)
def test_cri_mount_propagation(propagation: int, host_propagation: str, option: str, rootfs: str | None) -> None:
    config = container_config(mounts=[pb.Mount(container_path="/data", host_path="/srv/link", propagation=propagation)])
    spec = build(config, host=_host(MountSource("/srv/link", "/srv/real", host_propagation)))
    assert _mounts_by_dest(spec)["/data"] == {
        "destination": "/data", "type": "bind", "source": "/srv/real", "options": ["rbind", option, "rw"]
    }
    assert spec["linux"].get("rootfsPropagation") == rootfs


def test_rshared_wins_over_rslave_for_the_rootfs() -> None:
    config = container_config(mounts=[
        pb.Mount(container_path="/a", host_path="/a", propagation=pb.PROPAGATION_BIDIRECTIONAL),
        pb.Mount(container_path="/b/c", host_path="/b", propagation=pb.PROPAGATION_HOST_TO_CONTAINER),
    ])
    spec = build(config, host=_host(MountSource("/a", "/a", "shared"), MountSource("/b", "/b", "shared")))
    assert spec["linux"]["rootfsPropagation"] == "rshared"


def test_propagation_needs_a_matching_host_mount() -> None:
    config = container_config(mounts=[
        pb.Mount(container_path="/data", host_path="/srv", propagation=pb.PROPAGATION_BIDIRECTIONAL)])
    with pytest.raises(FailedPrecondition, match="shared"):
        build(config, host=_host(MountSource("/srv", "/srv", "slave")))
    config.mounts[0].propagation = pb.PROPAGATION_HOST_TO_CONTAINER
    with pytest.raises(FailedPrecondition, match="shared or slave"):
        build(config, host=_host(MountSource("/srv", "/srv", "private")))


def test_readonly_and_recursive_readonly_mounts() -> None:
    config = container_config(mounts=[
        pb.Mount(container_path="/ro", host_path="/ro", readonly=True, selinux_relabel=True),
        pb.Mount(container_path="/rro", host_path="/rro", readonly=True, recursive_read_only=True),
    ])
    mounts = _mounts_by_dest(build(config, host=_host(MountSource("/ro", "/ro"), MountSource("/rro", "/rro"))))
    assert mounts["/ro"]["options"] == ["rbind", "rprivate", "ro"]  # selinux_relabel ignored: no SELinux
    assert mounts["/rro"]["options"] == ["rbind", "rprivate", "rro"]


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        (pb.Mount(container_path="/x", host_path="/x", recursive_read_only=True), "needs readonly"),
        (pb.Mount(container_path="/x", host_path="/x", readonly=True, recursive_read_only=True,
                  propagation=pb.PROPAGATION_HOST_TO_CONTAINER), "private propagation"),
        (pb.Mount(container_path="relative", host_path="/x"), "absolute"),
    ],
)
def test_invalid_mounts(mount: pb.Mount, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        build(container_config(mounts=[mount]), host=_host(MountSource("/x", "/x", "shared")))


def test_recursive_readonly_needs_handler_support() -> None:
    config = container_config(mounts=[
        pb.Mount(container_path="/x", host_path="/x", readonly=True, recursive_read_only=True)])
    with pytest.raises(InvalidArgument, match="does not support"):
        build(config, host=_host(MountSource("/x", "/x")), options=SpecOptions(recursive_read_only=False))


def test_missing_host_path_is_invalid() -> None:
    config = container_config(mounts=[pb.Mount(container_path="/data", host_path="/nope")])
    with pytest.raises(InvalidArgument, match="does not exist"):
        build(config, host=_host(MountSource("/nope", error="does not exist")))
    with pytest.raises(InvalidArgument, match="not inspected"):
        build(config)


def test_image_volumes_bind_one_source_and_overlay_several() -> None:
    one = pb.Mount(container_path="/one", readonly=True, image=pb.ImageSpec(image="sha256:a"))
    two = pb.Mount(container_path="/two", readonly=True, image=pb.ImageSpec(image="sha256:b"), image_sub_path="etc")
    volumes = {"/one": ImageVolume("sha256:a", ("/s/1/fs",)), "/two": ImageVolume("sha256:b", ("/s/3/fs/etc",
                                                                                             "/s/2/fs/etc"))}
    spec = build(container_config(mounts=[one, two]), image_volumes=volumes)
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/one"] == {"destination": "/one", "type": "bind", "source": "/s/1/fs",
                              "options": ["rbind", "rprivate", "ro"]}
    assert mounts["/two"] == {"destination": "/two", "type": "overlay", "source": "overlay",
                              "options": ["ro", "lowerdir=/s/3/fs/etc:/s/2/fs/etc"]}
    check_spec(spec)


def test_image_volume_refusals() -> None:
    volumes = {"/img": ImageVolume("sha256:a", ("/s/1/fs",))}
    writable = pb.Mount(container_path="/img", image=pb.ImageSpec(image="sha256:a"))
    with pytest.raises(InvalidArgument, match="read-only"):
        build(container_config(mounts=[writable]), image_volumes=volumes)
    both = pb.Mount(container_path="/img", readonly=True, host_path="/x", image=pb.ImageSpec(image="sha256:a"))
    with pytest.raises(InvalidArgument, match="not both"):
        build(container_config(mounts=[both]), image_volumes=volumes)
    sub_path_only = pb.Mount(container_path="/x", host_path="/x", image_sub_path="etc")
    with pytest.raises(InvalidArgument, match="image volumes only"):
        build(container_config(mounts=[sub_path_only]), host=_host(MountSource("/x", "/x")))


def test_unsupported_mount_kinds() -> None:
    idmapped = pb.Mount(container_path="/x", host_path="/x",
                        uidMappings=[pb.IDMapping(host_id=1000, container_id=0, length=1)])
    with pytest.raises(Unimplemented, match="per-mount id mappings"):
        build(container_config(mounts=[idmapped]), host=_host(MountSource("/x", "/x")))


def test_mounts_sorted_by_depth_after_the_defaults() -> None:
    config = container_config(mounts=[
        pb.Mount(container_path="/a/b/c", host_path="/h1"),
        pb.Mount(container_path="/a", host_path="/h2"),
        pb.Mount(container_path="/a/b", host_path="/h3"),
    ])
    spec = build(config, host=_host(MountSource("/h1", "/h1"), MountSource("/h2", "/h2"), MountSource("/h3", "/h3")))
    destinations = [m["destination"] for m in spec["mounts"]]
    assert destinations.index("/a") < destinations.index("/a/b") < destinations.index("/a/b/c")
    assert destinations.index("/proc") < destinations.index("/a")


def test_a_dev_mount_replaces_every_default_under_dev() -> None:
    config = container_config(mounts=[pb.Mount(container_path="/dev", host_path="/hostdev")])
    pod = replace(POD, files=replace(POD.files, shm=""))
    spec = build(config, host=_host(MountSource("/hostdev", "/hostdev")), pod=pod)
    destinations = [m["destination"] for m in spec["mounts"]]
    assert "/dev/pts" not in destinations and "/dev/mqueue" not in destinations and "/dev/shm" not in destinations
    assert _mounts_by_dest(spec)["/dev"]["type"] == "bind"


# ---------------------------------------------------------------------------------------------- masked paths


def test_masked_and_readonly_paths() -> None:
    linux = build()["linux"]
    assert linux["maskedPaths"] == list(DEFAULT_MASKED_PATHS)
    assert linux["readonlyPaths"] == list(DEFAULT_READONLY_PATHS)
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]
    linux = build(container_config(linux=_sc(masked_paths=["/proc/x"], readonly_paths=["/proc/y"])))["linux"]
    assert linux["maskedPaths"] == ["/proc/x"] and linux["readonlyPaths"] == ["/proc/y"]


# ---------------------------------------------------------------------------------------------- privileged


def test_privileged_container() -> None:
    config = container_config(linux=_sc(privileged=True, masked_paths=["/proc/x"], seccomp=pb.SecurityProfile()))
    null = DeviceNode("/dev/null", "c", 1, 3, 0o666, 0, 0)
    sda = DeviceNode("/dev/sda", "b", 8, 0, 0o660, 0, 6)
    spec = build(config, _privileged_sandbox(), host=HostPaths(host_devices=(null, sda)))
    linux = spec["linux"]
    assert "maskedPaths" not in linux and "readonlyPaths" not in linux
    assert "seccomp" not in linux
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert [d["path"] for d in linux["devices"]] == ["/dev/null", "/dev/sda"]
    assert linux["devices"][1] == {"path": "/dev/sda", "type": "b", "major": 8, "minor": 0, "fileMode": 0o660,
                                   "uid": 0, "gid": 6}
    mounts = _mounts_by_dest(spec)
    assert "rw" in mounts["/sys"]["options"] and "ro" not in mounts["/sys"]["options"]
    assert "rw" in mounts["/sys/fs/cgroup"]["options"]
    assert not any(ns["type"] == "cgroup" for ns in linux["namespaces"])
    assert check_spec(spec) == []


def test_container_id_is_checked() -> None:
    for bad in ("", "../x", "a/b", "-x"):
        with pytest.raises(InvalidArgument, match="container id"):
            build(container_id=bad)


def test_privileged_container_needs_a_privileged_pod() -> None:
    with pytest.raises(InvalidArgument, match="privileged"):
        build(container_config(linux=_sc(privileged=True)))


# ---------------------------------------------------------------------------------------------- devices


def test_cri_devices_with_permissions() -> None:
    fuse = DeviceNode("/dev/fuse", "c", 10, 229, 0o666, 0, 0)
    config = container_config(devices=[pb.Device(host_path="/dev/fuse-link", container_path="/dev/fuse",
                                                 permissions="mr")])
    host = HostPaths(devices={"/dev/fuse-link": DeviceLookup("/dev/fuse-link", "/dev/fuse", (fuse,))})
    linux = build(config, host=host)["linux"]
    assert linux["devices"] == [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666,
                                 "uid": 0, "gid": 0}]
    assert linux["resources"]["devices"] == [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rm"},
    ]


def test_device_directory_expands() -> None:
    nodes = (DeviceNode("/dev/snd/pcm0", "c", 116, 2, 0o660, 0, 29), DeviceNode("/dev/snd/sub/timer", "c", 116, 33,
                                                                                 0o660, 0, 29))
    config = container_config(devices=[pb.Device(host_path="/dev/snd", container_path="/dev/sound",
                                                 permissions="rw")])
    host = HostPaths(devices={"/dev/snd": DeviceLookup("/dev/snd", "/dev/snd", nodes)})
    assert [d["path"] for d in build(config, host=host)["linux"]["devices"]] == ["/dev/sound/pcm0",
                                                                                 "/dev/sound/sub/timer"]


def test_bad_devices() -> None:
    config = container_config(devices=[pb.Device(host_path="/dev/x", container_path="/dev/x", permissions="rwx")])
    with pytest.raises(InvalidArgument, match="permissions"):
        build(config, host=HostPaths(devices={"/dev/x": DeviceLookup("/dev/x", "/dev/x", ())}))
    config = container_config(devices=[pb.Device(host_path="/tmp/file", container_path="/dev/x", permissions="r")])
    with pytest.raises(InvalidArgument, match="not a device"):
        build(config, host=HostPaths(devices={"/tmp/file": DeviceLookup("/tmp/file", error="is not a device node")}))


# ---------------------------------------------------------------------------------------------- namespaces


def _ns(spec: dict[str, Any]) -> dict[str, str | None]:
    return {ns["type"]: ns.get("path") for ns in spec["linux"]["namespaces"]}


def test_pod_namespaces_and_pid_unset_means_pod() -> None:
    assert _ns(build()) == {
        "mount": None,
        "network": POD.net_ns_path,
        "uts": POD.uts_ns_path,
        "ipc": POD.ipc_ns_path,
        "pid": POD.pid_ns_path,
        "cgroup": None,
    }


def test_pid_namespace_modes() -> None:
    def pid(mode: int, target: str = "", **kw: Any) -> str | None:
        config = container_config(linux=_sc(namespace_options=pb.NamespaceOption(pid=mode, target_id=target)))
        return _ns(build(config, **kw)).get("pid", "host")

    assert pid(pb.CONTAINER) is None  # a new one
    assert pid(pb.POD) == POD.pid_ns_path
    pod = replace(POD, target_pid_ns_path="/proc/777/ns/pid")
    assert pid(pb.TARGET, "other", pod=pod) == "/proc/777/ns/pid"
    with pytest.raises(InvalidArgument, match="target_id"):
        pid(pb.TARGET, pod=pod)
    with pytest.raises(FailedPrecondition, match="other"):
        pid(pb.TARGET, "other")
    with pytest.raises(InvalidArgument, match="does not share"):
        pid(pb.POD, pod=replace(POD, pid_ns_path=""))
    with pytest.raises(InvalidArgument, match="host pid"):
        pid(pb.NODE)
    sandbox = sandbox_config()
    sandbox.linux.security_context.namespace_options.pid = pb.NODE
    assert pid(pb.NODE, sandbox=sandbox) == "host"
    assert pid(pb.POD, sandbox=sandbox) == "host"


def test_host_network_and_ipc() -> None:
    sandbox = sandbox_config()
    sandbox.linux.security_context.namespace_options.network = pb.NODE
    sandbox.linux.security_context.namespace_options.ipc = pb.NODE
    config = container_config(linux=_sc(namespace_options=pb.NamespaceOption(network=pb.NODE, ipc=pb.NODE)))
    spec = build(config, sandbox)
    assert set(_ns(spec)) == {"mount", "pid", "cgroup"}
    assert "hostname" not in spec  # the host's UTS namespace: never set the host's name


def test_missing_pod_namespace_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition, match="network"):
        build(pod=replace(POD, net_ns_path=""))
    with pytest.raises(FailedPrecondition, match="IPC"):
        build(pod=replace(POD, ipc_ns_path=""))


def test_cgroup_namespace_wherever_the_kernel_has_them() -> None:
    assert "cgroup" in _ns(build())
    assert "cgroup" not in _ns(build(node=replace(NODE, cgroup_namespaces=False)))


def _userns_option(mode: int = pb.POD, **kw: Any) -> pb.NamespaceOption:
    ids = [pb.IDMapping(host_id=1000, container_id=0, length=100000)]
    return pb.NamespaceOption(userns_options=pb.UserNamespace(mode=mode, uids=kw.get("uids", ids),
                                                             gids=kw.get("gids", ids)))


def test_a_container_joins_its_pods_user_namespace_through_id_mapped_mounts() -> None:
    options = _userns_option()
    sandbox = sandbox_config()
    sandbox.linux.security_context.namespace_options.CopyFrom(options)
    userns = PodUserns(uids=((0, 1000, 100000),), gids=((0, 1000, 100000),), path="/run/crisp/sandboxes/sb1/ns/user")
    volume = pb.Mount(container_path="/data", host_path="/srv/data")
    image = pb.Mount(container_path="/img", readonly=True, image=pb.ImageSpec(image="sha256:b"))
    spec = build(container_config(mounts=[volume, image], linux=_sc(namespace_options=options)), sandbox,
                 pod=replace(POD, userns=userns), host=_host(MountSource("/srv/data", "/srv/data")),
                 overlay=Overlay(("/snap/2/fs", "/snap/1/fs"), "/c/upper", "/c/work"),
                 image_volumes={"/img": ImageVolume("sha256:b", ("/snap/9/fs", "/snap/8/fs"))})
    check_spec(spec)
    linux = spec["linux"]
    assert linux["namespaces"][0] == {"type": "user", "path": userns.path}
    assert {"type": "cgroup"} in linux["namespaces"]
    assert linux["uidMappings"] == linux["gidMappings"] == [{"containerID": 0, "hostID": 1000, "size": 100000}]
    staged = "/run/crisp/containers/c1/idmap"
    idmap = json.loads(spec["annotations"][IDMAP_ANNOTATION])
    assert idmap == {"userns": userns.path, "mounts": [
        {"target": f"{staged}/0", "source": "/snap/2/fs"}, {"target": f"{staged}/1", "source": "/snap/1/fs"},
        {"target": f"{staged}/2", "source": "/srv/data"},
        {"target": f"{staged}/3", "source": "/snap/9/fs"}, {"target": f"{staged}/4", "source": "/snap/8/fs"},
        {"target": f"{staged}/5", "lowerdirs": [f"{staged}/3", f"{staged}/4"]}]}
    # the rootfs overlay is made of the staged layers; its writable layer is not id-mapped
    assert json.loads(spec["annotations"][OVERLAY_ANNOTATION]) == {
        "lowerdirs": [f"{staged}/0", f"{staged}/1"], "upperdir": "/c/upper", "workdir": "/c/work"}
    mounts = _mounts_by_dest(spec)
    assert mounts["/data"]["source"] == f"{staged}/2" and mounts["/img"]["source"] == f"{staged}/5"
    assert mounts["/img"]["type"] == "bind" and "ro" in mounts["/img"]["options"]
    assert mounts["/etc/hosts"]["source"] == "/run/crisp/sandboxes/sb1/hosts"  # the pod's files: as they are


def test_user_namespace_refusals() -> None:
    options = _userns_option()
    sandbox = sandbox_config()
    sandbox.linux.security_context.namespace_options.CopyFrom(options)
    with pytest.raises(FailedPrecondition, match="has no user namespace"):
        build(container_config(linux=_sc(namespace_options=options)), sandbox)
    other = _userns_option(uids=[pb.IDMapping(host_id=5000, container_id=0, length=10)])
    with pytest.raises(InvalidArgument, match="must be its pod's"):
        build(container_config(linux=_sc(namespace_options=other)), sandbox)
    build(container_config(linux=_sc(namespace_options=_userns_option(pb.NODE, uids=[], gids=[]))))


@pytest.mark.parametrize("options, message", [
    (_userns_option(pb.CONTAINER), "mode CONTAINER is not supported"),
    (_userns_option(pb.TARGET), "mode TARGET is not supported"),
    (_userns_option(pb.NODE), "NODE takes no mappings"),
    (_userns_option(uids=[]), "exactly one uid mapping"),
    (_userns_option(gids=[pb.IDMapping(length=1)] * 2), "exactly one gid mapping"),
    (_userns_option(uids=[pb.IDMapping(container_id=1, host_id=1000, length=5)]), "must map container id 0"),
    (_userns_option(uids=[pb.IDMapping(host_id=1000)]), "length 0"),
    (_userns_option(gids=[pb.IDMapping(host_id=2**32 - 2, length=2)]), "beyond the last id"),
])
def test_pod_user_namespace_checks(options: pb.NamespaceOption, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        pod_userns(options)


def test_pod_user_namespace_with_host_namespaces_is_refused() -> None:
    for kind in ("network", "ipc", "pid"):
        options = _userns_option()
        setattr(options, kind, pb.NODE)
        with pytest.raises(InvalidArgument, match=f"host's {kind}"):
            pod_userns(options)
    assert pod_userns(_userns_option()) == PodUserns(uids=((0, 1000, 100000),), gids=((0, 1000, 100000),))
    assert pod_userns(pb.NamespaceOption()) is None


# ---------------------------------------------------------------------------------------------- hostname


def test_hostname() -> None:
    assert build()["hostname"] == "pod-host"
    assert "hostname" not in build(sandbox=sandbox_config(hostname=""))


# ---------------------------------------------------------------------------------------------- cgroups


def test_cgroups_path_is_the_callers_value() -> None:
    """The container's cgroup is made once (runtime.cgroups.paths, tested there) and written as it was given."""
    assert build()["linux"]["cgroupsPath"] == "/kubepods/burstable/podu1/crisp-c1"
    assert build(cgroup_path="/kubepods.slice/x.slice/crisp-c1")["linux"]["cgroupsPath"] == (
        "/kubepods.slice/x.slice/crisp-c1")


# ---------------------------------------------------------------------------------------------- resources


def _resources(**fields: Any) -> dict[str, Any]:
    config = container_config(linux=pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(**fields)))
    resources: dict[str, Any] = build(config)["linux"]["resources"]
    return resources


def test_resources() -> None:
    r = _resources(
        cpu_shares=512, cpu_quota=50000, cpu_period=100000, cpuset_cpus="0-1", cpuset_mems="0",
        memory_limit_in_bytes=256 << 20,
        hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=1 << 30)],
        unified={"memory.high": "200M", "pids.max": "100"},
    )
    assert r["cpu"] == {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"}
    assert r["memory"] == {"limit": 256 << 20, "swap": 256 << 20}  # no swap unless asked for
    assert r["hugepageLimits"] == [{"pageSize": "2MB", "limit": 1 << 30}]
    assert r["unified"] == {"memory.high": "200M", "pids.max": "100"}


def test_zero_means_unset() -> None:
    r = _resources(oom_score_adj=10)
    assert set(r) == {"devices"}
    assert build()["linux"]["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}


def test_swap_limits() -> None:
    assert _resources(memory_limit_in_bytes=100, memory_swap_limit_in_bytes=300)["memory"] == {"limit": 100,
                                                                                              "swap": 300}
    assert _resources(memory_limit_in_bytes=100, memory_swap_limit_in_bytes=-1)["memory"] == {"limit": 100,
                                                                                             "swap": -1}
    with pytest.raises(InvalidArgument, match="swap"):
        _resources(memory_limit_in_bytes=100, memory_swap_limit_in_bytes=50)
    config = container_config(linux=pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(
        memory_limit_in_bytes=100)))
    assert build(config, options=SpecOptions(swap_limit=False))["linux"]["resources"]["memory"] == {"limit": 100}


# ---------------------------------------------------------------------------------------------- sysctls


def test_pod_sysctls() -> None:
    sandbox = sandbox_config()
    sandbox.linux.sysctls.update({"net.ipv4.ip_forward": "1", "kernel/shm_rmid_forced": "1",
                                  "net/ipv4/conf/eth0.100/forwarding": "1"})
    assert build(sandbox=sandbox)["linux"]["sysctl"] == {
        "kernel.shm_rmid_forced": "1",
        "net.ipv4.conf.eth0/100.forwarding": "1",
        "net.ipv4.ip_forward": "1",
    }
    assert "sysctl" not in build()["linux"]


@pytest.mark.parametrize(
    ("sysctl", "host_ns", "message"),
    [
        ("net.ipv4.ip_forward", "network", "host network"),
        ("kernel.shmmax", "ipc", "host IPC"),
        ("fs.mqueue.msg_max", "ipc", "host IPC"),
        ("vm.swappiness", None, "not namespaced"),
        ("kernel.panic", None, "not namespaced"),
    ],
)
def test_sysctls_that_would_change_the_host(sysctl: str, host_ns: str | None, message: str) -> None:
    sandbox = sandbox_config()
    sandbox.linux.sysctls[sysctl] = "1"
    if host_ns:
        setattr(sandbox.linux.security_context.namespace_options, host_ns, pb.NODE)
    with pytest.raises(InvalidArgument, match=message):
        build(sandbox=sandbox)


# ---------------------------------------------------------------------------------------------- annotations


def test_annotations() -> None:
    config = container_config(annotations={"io.example/keep": "1", "other": "2"})
    sandbox = sandbox_config(annotations={"pod.example/x": "3", "drop": "4"})
    overlay = Overlay(("/snap/2/fs", "/snap/1/fs"), "/c/upper", "/c/work")
    options = SpecOptions(container_annotations=("io.example/*",), pod_annotations=("pod.example/x",))
    annotations = build(config, sandbox, overlay=overlay, options=options)["annotations"]
    assert annotations["io.kubernetes.cri.container-type"] == "container"
    assert annotations["io.kubernetes.cri.container-name"] == "app"
    assert annotations["io.kubernetes.cri.sandbox-id"] == "sb1"
    assert annotations["io.kubernetes.cri.sandbox-name"] == "pod"
    assert annotations["io.kubernetes.cri.sandbox-namespace"] == "default"
    assert annotations["io.kubernetes.cri.sandbox-uid"] == "u1"
    assert annotations["io.kubernetes.cri.image-name"] == "docker.io/library/busybox:latest"
    assert json.loads(annotations[OVERLAY_ANNOTATION]) == {
        "lowerdirs": ["/snap/2/fs", "/snap/1/fs"], "upperdir": "/c/upper", "workdir": "/c/work"
    }
    assert annotations["io.example/keep"] == "1" and annotations["pod.example/x"] == "3"
    assert "other" not in annotations and "drop" not in annotations
    # a CRI annotation cannot forge crisp's own
    config = container_config(annotations={OVERLAY_ANNOTATION: "{}"})
    assert OVERLAY_ANNOTATION not in build(config, options=SpecOptions(container_annotations=("*",)))["annotations"]


# ---------------------------------------------------------------------------------------------- misc CRI


def test_unsupported_security_features() -> None:
    apparmor = pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref="my-profile")
    with pytest.raises(FailedPrecondition, match="AppArmor"):
        build(container_config(linux=_sc(apparmor=apparmor)))
    build(container_config(linux=_sc(apparmor=pb.SecurityProfile(), apparmor_profile="runtime/default")))


# ---------------------------------------------------------------------------------------------- schema


def _matrix() -> list[tuple[str, dict[str, Any]]]:
    host_sandbox = sandbox_config()
    host_sandbox.linux.security_context.namespace_options.network = pb.NODE
    host_sandbox.linux.security_context.namespace_options.pid = pb.NODE
    host_sandbox.linux.sysctls["kernel.shmmax"] = "100"
    full = container_config(
        tty=True,
        envs=[pb.KeyValue(key="A", value=b"1")],
        mounts=[pb.Mount(container_path="/data", host_path="/srv", propagation=pb.PROPAGATION_BIDIRECTIONAL,
                         readonly=True)],
        devices=[pb.Device(host_path="/dev/fuse", container_path="/dev/fuse", permissions="rwm")],
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(cpu_shares=2, cpu_quota=1000, cpu_period=10000,
                                                 memory_limit_in_bytes=1 << 30, oom_score_adj=999,
                                                 hugepage_limits=[pb.HugepageLimit(page_size="1GB", limit=0)]),
            security_context=pb.LinuxContainerSecurityContext(
                run_as_username="bob", supplemental_groups=[5], no_new_privs=True, readonly_rootfs=True,
                capabilities=pb.Capability(add_capabilities=["SYS_ADMIN"], drop_capabilities=["KILL"]),
                seccomp=pb.SecurityProfile(),
                namespace_options=pb.NamespaceOption(pid=pb.CONTAINER),
            ),
        ),
    )
    fuse = DeviceNode("/dev/fuse", "c", 10, 229, 0o666, 0, 0)
    host = HostPaths(mounts={"/srv": MountSource("/srv", "/srv", "shared")},
                     devices={"/dev/fuse": DeviceLookup("/dev/fuse", "/dev/fuse", (fuse,))})
    privileged = container_config(linux=_sc(privileged=True))
    return [
        ("default", {}),
        ("full", {"config": full, "host": host, "overlay": Overlay(("/l",), "/u", "/w")}),
        ("host namespaces", {"sandbox": host_sandbox}),
        ("privileged", {"config": privileged, "sandbox": _privileged_sandbox(),
                        "host": HostPaths(host_devices=(fuse,))}),
    ]


@pytest.mark.parametrize(("name", "kw"), _matrix(), ids=[n for n, _ in _matrix()])
def test_spec_matches_the_runtime_spec_schema(name: str, kw: dict[str, Any]) -> None:
    config = kw.pop("config", None)
    sandbox = kw.pop("sandbox", None)
    spec = build(config, sandbox, **kw)
    assert check_spec(spec) == []
    # and survives JSON (config.json) unchanged
    assert json.loads(json.dumps(spec)) == spec


def test_the_schema_catches_mistakes() -> None:
    spec = build()
    broken = json.loads(json.dumps(spec))
    del broken["process"]["cwd"]
    broken["process"]["user"]["uid"] = -1
    broken["linux"]["namespaces"].append({"type": "mount"})
    broken["mounts"][0]["options"] = "ro"
    broken["linux"]["resources"]["devices"][0]["access"] = "x"
    errors = check_spec(broken)
    assert len(errors) == 4, errors  # the duplicate namespace is only checked on an otherwise valid spec
    assert any("cwd" in e for e in errors) and any("uid" in e for e in errors)
    fixed = json.loads(json.dumps(spec))
    fixed["linux"]["namespaces"].append({"type": "mount"})
    assert check_spec(fixed) == [f"spec.linux.namespaces: a namespace type appears twice: {_ns_types(fixed)}"]
    assert inputs().container_id == "c1"


def _ns_types(spec: dict[str, Any]) -> list[str]:
    return [ns["type"] for ns in spec["linux"]["namespaces"]]
