"""Pods with a user namespace of their own (KEP-127, hostUsers: false) over the real socket: the kubelet's
mappings, id-mapped rootfs and volumes, namespaced capabilities, the refusals; the built-in executor and runc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from tests.cri.conftest import TestImages
from tests.cri.pods import Pods, pod_config, running_pods
from tests.cri.test_containers import Kubelet
from tests.leaks import mounts_under
from tests.vm.plugin import in_guest

pytestmark = pytest.mark.root

HOST_ID, LENGTH = 1000, 100000  # critest's mapping: no 65536 alignment


def _mapping(container_id: int = 0, host_id: int = HOST_ID, length: int = LENGTH) -> cri.IDMapping:
    return cri.IDMapping(container_id=container_id, host_id=host_id, length=length)


def _userns(mode: int = cri.POD, uids: list[cri.IDMapping] | None = None,
            gids: list[cri.IDMapping] | None = None) -> cri.NamespaceOption:
    uids = [_mapping()] if uids is None else uids
    gids = [_mapping()] if gids is None else gids
    return cri.NamespaceOption(userns_options=cri.UserNamespace(mode=mode, uids=uids, gids=gids))


def _pod_with(options: cri.NamespaceOption) -> dict[str, object]:
    return {"linux": cri.LinuxPodSandboxConfig(security_context=cri.LinuxSandboxSecurityContext(
        namespace_options=options))}


def _container_options(options: cri.NamespaceOption) -> dict[str, object]:
    return {"linux": cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(
        namespace_options=options))}


@pytest.fixture
def pods() -> Iterator[Pods]:
    """crispd with its dirs where a pod's ids can walk to them, as /run and /var/lib are on a node (runc prepares
    the rootfs as the container's root, a host uid): pytest's own tmp dirs are private to root."""
    # the VM guest's /tmp is a tmpfs, which Debian 12's kernel cannot id-map (6.3 can): there crispd's dirs go on
    # the root filesystem, as a node's /var/lib would be; its emulated CPU makes every callback slow
    base = Path(tempfile.mkdtemp(prefix="crisp-userns-", dir="/var/tmp" if in_guest() else None))
    base.chmod(0o711)
    try:
        with running_pods(base, start_timeout=120 if in_guest() else 30, check_slow_callbacks=not in_guest()) as p:
            yield p
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["", "runc"], ids=["builtin", "runc"])
def kubelet(request: pytest.FixtureRequest, pods: Pods, test_images: TestImages, tmp_path: Path) -> Kubelet:
    pods.handler = request.param
    return Kubelet(pods, test_images, tmp_path / "logs")


def test_status_advertises_user_namespaces_and_the_state_dir(kubelet: Kubelet) -> None:
    status = kubelet.rt.Status(cri.StatusRequest(verbose=True))
    features = {h.name: h.features.user_namespaces for h in status.runtime_handlers}
    assert features[""] and features["runc"], features
    assert json.loads(status.info["config"])["stateDir"] == str(kubelet.pods.daemon.state)


# the shared-PID pod also runs in the VM tier: pure cgroup v2 (the container gets a cgroup namespace) and Debian 12's
# kernel (6.1: id-mapped overlayfs layers, no id-mapped tmpfs)
@pytest.mark.parametrize("pid_mode", [pytest.param(cri.POD, marks=pytest.mark.vm_also), cri.CONTAINER],
                         ids=["shared-pid", "own-pid"])
def test_pod_user_namespace(kubelet: Kubelet, pid_mode: int) -> None:
    options = _userns()
    options.pid = pid_mode
    pod_id, pod = kubelet.pod(**_pod_with(options))
    status = kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
    assert status.linux.namespaces.options.userns_options == options.userns_options

    volume = kubelet.pods.daemon.base / "volume"  # on a filesystem the kernel can id-map (see the fixture)
    volume.mkdir()
    (volume / "from-host").write_text("hi")
    os.chown(volume / "from-host", 33, 33)
    container_id = kubelet.run(pod_id, pod, "app", ["sleep", "1000"], **_container_options(options),
                               mounts=[cri.Mount(container_path="/vol", host_path=str(volume))])
    assert kubelet.exec(container_id, ["cat", "/proc/self/uid_map"]).stdout.split() == [b"0", b"1000", b"100000"]
    assert kubelet.exec(container_id, ["cat", "/proc/self/gid_map"]).stdout.split() == [b"0", b"1000", b"100000"]
    # the image's files are root's inside, through the id-mapped layers (on disk they are the host's root's)
    assert kubelet.exec(container_id, ["stat", "-c", "%u:%g", "/bin/busybox"]).stdout == b"0:0\n"
    # the volume is id-mapped too: the pod sees its files with the ids they have on disk, root's included (as the
    # kubelet expects of a user-namespaced pod's volumes), and what it writes there keeps its ids on disk
    assert kubelet.exec(container_id, ["stat", "-c", "%u", "/vol/from-host", "/vol"]).stdout == b"33\n0\n"
    assert kubelet.exec(container_id, ["sh", "-c", "echo x > /written && echo y > /vol/written"]).exit_code == 0
    assert (volume / "written").stat().st_uid == 0
    # what it writes in its writable layer belongs to the mapped host ids
    upper = Path(kubelet.pods.daemon.root) / "containers" / container_id / "upper"
    assert (upper / "written").stat().st_uid == HOST_ID
    # the process is the mapped host uid out here, and its capabilities are only the user namespace's
    assert Path(f"/proc/{_pid_of(container_id)}").stat().st_uid == HOST_ID
    assert kubelet.exec(container_id, ["id", "-u"]).stdout == b"0\n"
    # CAP_MKNOD (a default capability) holds only in the user namespace, which may not make devices
    mknod = kubelet.exec(container_id, ["mknod", "/null2", "c", "1", "3"])
    assert mknod.exit_code != 0 and b"Operation not permitted" in mknod.stderr
    # CAP_CHOWN likewise: to ids of the mapping only
    assert kubelet.exec(container_id, ["chown", "33", "/written"]).exit_code == 0
    assert (upper / "written").stat().st_uid == HOST_ID + 33
    assert kubelet.exec(container_id, ["chown", str(LENGTH + 1), "/written"]).exit_code != 0


def test_a_user_namespaced_pods_namespaces_are_set_up_inside_it(pods: Pods) -> None:
    """The pod's hostname, lo and sysctls are set by its user namespace's root (the pins are made from outside,
    then the maps written, then the setup runs with the new user namespace's capabilities)."""
    config = pod_config(**_pod_with(_userns()))
    config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "80"
    config.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    pod_id = pods.run(config)
    ns = pods.daemon.state / "sandboxes" / pod_id / "ns"

    def inside(*args: str) -> str:
        return subprocess.run(["nsenter", *args], check=True, capture_output=True, text=True).stdout.strip()

    assert inside(f"--user={ns / 'user'}", "cat", "/proc/self/uid_map").split() == ["0", str(HOST_ID), str(LENGTH)]
    assert inside(f"--uts={ns / 'uts'}", "hostname") == "web-host"
    assert inside(f"--net={ns / 'net'}", "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start") == "80"
    assert "UP" in inside(f"--net={ns / 'net'}", "ip", "-o", "link", "show", "lo")
    assert inside(f"--ipc={ns / 'ipc'}", "cat", "/proc/sys/kernel/shm_rmid_forced") == "1"


def _pid_of(container_id: str) -> int:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if container_id in (proc / "cgroup").read_text() and (proc / "cmdline").read_bytes().startswith(
                        b"sleep"):
                    return int(proc.name)
            except OSError:
                continue
    raise AssertionError("container process not found")


def test_node_mode_is_the_hosts(kubelet: Kubelet) -> None:
    options = _userns(cri.NODE, uids=[], gids=[])
    pod_id, pod = kubelet.pod(**_pod_with(options))
    container_id = kubelet.run(pod_id, pod, "app", ["sleep", "1000"], **_container_options(options))
    inside = kubelet.exec(container_id, ["cat", "/proc/self/uid_map"]).stdout.split()
    assert inside == Path("/proc/self/uid_map").read_bytes().split()


@pytest.mark.parametrize("options, words", [
    (_userns(cri.CONTAINER), "mode CONTAINER"),
    (_userns(cri.TARGET), "mode TARGET"),
    (_userns(uids=[_mapping(), _mapping(host_id=2000)]), "exactly one uid mapping"),
    (_userns(gids=[]), "exactly one gid mapping"),
    (_userns(uids=[_mapping(container_id=1)]), "must map container id 0"),
    (_userns(uids=[_mapping(length=0)]), "length 0"),
    (_userns(uids=[_mapping(host_id=2**32 - 10)]), "beyond the last id"),
], ids=["container", "target", "two-mappings", "no-gid-mapping", "id-0-unmapped", "empty", "too-far"])
def test_refusals_leave_nothing(kubelet: Kubelet, options: cri.NamespaceOption, words: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        kubelet.pod(**_pod_with(options))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in str(err.value.details()), err.value
    assert list(kubelet.rt.ListPodSandbox(cri.ListPodSandboxRequest()).items) == []
    assert kubelet.pods.leaks() == []


def test_host_network_with_a_user_namespace_is_refused(kubelet: Kubelet) -> None:
    options = _userns()
    options.network = cri.NODE
    with pytest.raises(grpc.RpcError) as err:
        kubelet.pod(**_pod_with(options))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "host's network" in str(err.value.details())


def test_image_volume_is_id_mapped(kubelet: Kubelet) -> None:
    options = _userns()
    pod_id, pod = kubelet.pod(**_pod_with(options))
    volume = cri.Mount(container_path="/img", readonly=True, image=cri.ImageSpec(image=kubelet.images.busybox))
    container_id = kubelet.run(pod_id, pod, "app", ["sleep", "1000"], **_container_options(options), mounts=[volume])
    assert kubelet.exec(container_id, ["stat", "-c", "%u:%g", "/img/bin/busybox", "/img/etc/group"]).stdout == \
        b"0:0\n0:0\n"
    assert b"audio" in kubelet.exec(container_id, ["cat", "/img/etc/group"]).stdout  # the layers merged
    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=container_id, timeout=0))
    kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=container_id))
    # its staged id-mapped mounts went with it (with its cleanup, after the answer)
    assert kubelet.pods.cleaned_up(container_id)
    assert mounts_under(kubelet.pods.daemon.state / "containers") == []


def test_a_volume_the_kernel_cannot_id_map_is_refused_by_name(kubelet: Kubelet) -> None:
    """ramfs has no id-mapped mounts on any kernel (tmpfs had none before 6.3: the VM tier's 6.1)."""
    volume = Path(tempfile.mkdtemp(prefix="crisp-ramfs-"))
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(volume)], check=True)
    try:
        options = _userns()
        pod_id, pod = kubelet.pod(**_pod_with(options))
        with pytest.raises(grpc.RpcError) as err:
            kubelet.create(pod_id, pod, "app", ["true"], **_container_options(options),
                           mounts=[cri.Mount(container_path="/vol", host_path=str(volume))])
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"volume {volume} -> /vol" in str(err.value.details())
        assert list(kubelet.rt.ListContainers(cri.ListContainersRequest()).containers) == []
        assert mounts_under(kubelet.pods.daemon.state / "containers") == []
    finally:
        subprocess.run(["umount", str(volume)], check=False)
        volume.rmdir()
