"""Containers over the real socket, as the kubelet drives them: real images, shims, executor, namespaces."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from runtime import failpoints
from runtime.cgroups import CgroupV2Manager
from tests.cri.conftest import TestImages
from tests.cri.pods import Pods, pod_config, running_pods
from tests.leaks import mounts_under, processes_mentioning, wait_until

pytestmark = pytest.mark.root

CREATE_FAIL_POINTS = failpoints.STEPS["CreateContainer"]
# StartContainer's steps that make the container (CreateContainer leaves that to it)
MAKING_FAIL_POINTS = ("start_container.shim_ready", "start_container.created", "start_container.pid")
CRI_LOG_LINE = re.compile(rb"^(\S+) (stdout|stderr) ([PF]) (.*)$")


class Kubelet:
    """What the kubelet does, in a few calls."""

    def __init__(self, pods: Pods, images: TestImages, log_dir: Path) -> None:
        self.pods = pods
        self.images = images
        self.rt = pods.daemon.runtime
        self.log_dir = log_dir
        pods.daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=images.busybox)), timeout=60)

    def pod(self, name: str = "web", **kwargs: object) -> tuple[str, cri.PodSandboxConfig]:
        config = pod_config(name, **kwargs)
        config.log_directory = str(self.log_dir / name)
        return self.pods.run(config), config

    def create(self, pod_id: str, pod: cri.PodSandboxConfig, name: str, command: list[str],
               **kwargs: object) -> str:
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=name, attempt=0), image=cri.ImageSpec(image=self.images.busybox),
            command=command, log_path=f"{name}/0.log", labels={"c": name}, **kwargs)  # type: ignore[arg-type]
        response = self.rt.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=config,
                                                                      sandbox_config=pod))
        return str(response.container_id)

    def run(self, pod_id: str, pod: cri.PodSandboxConfig, name: str, command: list[str], **kwargs: object) -> str:
        container_id = self.create(pod_id, pod, name, command, **kwargs)
        self.rt.StartContainer(cri.StartContainerRequest(container_id=container_id))
        return container_id

    def status(self, container_id: str) -> cri.ContainerStatus:
        return self.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id)).status

    def wait_exited(self, container_id: str, timeout: float = 20) -> cri.ContainerStatus:
        assert wait_until(lambda: self.status(container_id).state == cri.CONTAINER_EXITED, timeout)
        return self.status(container_id)

    def exec(self, container_id: str, cmd: list[str], timeout: int = 10) -> cri.ExecSyncResponse:
        return self.rt.ExecSync(cri.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout))


@pytest.fixture(params=["", "runc"], ids=["builtin", "runc"])
def kubelet(request: pytest.FixtureRequest, pods: Pods, test_images: TestImages, tmp_path: Path) -> Kubelet:
    """Every test runs under the built-in executor and again under runc: one code path, two executors."""
    pods.handler = request.param
    return Kubelet(pods, test_images, tmp_path / "logs")


def read_log(path: Path) -> list[tuple[str, str, bytes]]:
    lines = []
    for raw in path.read_bytes().splitlines():
        match = CRI_LOG_LINE.match(raw)
        assert match, raw
        lines.append((match.group(2).decode(), match.group(3).decode(), match.group(4)))
    return lines


def test_kubelet_sequence(kubelet: Kubelet) -> None:
    pod_id, pod = kubelet.pod()
    container_id = kubelet.run(pod_id, pod, "app", ["sh", "-c", "echo hello; echo oops >&2; exec sleep 1000"])
    status = kubelet.status(container_id)
    assert status.state == cri.CONTAINER_RUNNING
    assert status.started_at >= status.created_at > 0
    assert status.image.image == kubelet.images.busybox
    assert status.image_id.startswith("sha256:")
    assert status.image_ref.startswith(kubelet.images.busybox.rsplit(":", 1)[0] + "@sha256:")
    assert status.labels["c"] == "app" and status.metadata.name == "app"
    assert status.log_path == str(kubelet.log_dir / "web" / "app" / "0.log")
    assert status.user.linux.uid == 0 and status.user.linux.gid == 0
    log_path = Path(status.log_path)
    assert wait_until(lambda: log_path.exists() and len(read_log(log_path)) == 2)
    assert sorted(read_log(log_path)) == [("stderr", "F", b"oops"), ("stdout", "F", b"hello")]

    result = kubelet.exec(container_id, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.exit_code, result.stdout, result.stderr) == (7, b"out\n", b"err\n")
    assert kubelet.exec(container_id, ["busybox", "hostname"]).stdout == b"web-host\n"

    listed = kubelet.rt.ListContainers(cri.ListContainersRequest()).containers
    assert [c.id for c in listed] == [container_id]
    pod_status = kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    assert [c.id for c in pod_status.containers_statuses] == [container_id]

    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=container_id, timeout=10))
    status = kubelet.status(container_id)
    assert status.state == cri.CONTAINER_EXITED
    assert status.exit_code == 128 + signal.SIGTERM and status.reason == "Error"
    assert status.finished_at >= status.started_at
    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=container_id, timeout=10))  # idempotent
    kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=container_id))
    kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=container_id))  # idempotent
    with pytest.raises(grpc.RpcError) as err:
        kubelet.status(container_id)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert log_path.exists()  # logs belong to the kubelet
    kubelet.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    kubelet.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert kubelet.pods.leaks() == []


@pytest.mark.parametrize(("command", "code", "reason"), [
    (["true"], 0, "Completed"), (["sh", "-c", "exit 3"], 3, "Error"),
    (["sh", "-c", "kill -9 $$"], 137, "Error"),
])
def test_exit_codes(kubelet: Kubelet, command: list[str], code: int, reason: str) -> None:
    pod_id, pod = kubelet.pod()
    container_id = kubelet.run(pod_id, pod, "job", command)
    status = kubelet.wait_exited(container_id)
    assert (status.exit_code, status.reason) == (code, reason)
    assert status.finished_at >= status.started_at > 0


def test_stop_signal_and_grace(kubelet: Kubelet) -> None:
    pod_id, pod = kubelet.pod()
    # ignores SIGTERM: the stop must fall back to SIGKILL after the grace period
    stubborn = kubelet.run(pod_id, pod, "stubborn",
                           ["sh", "-c", "trap '' TERM; touch /tmp/trapped; while :; do sleep 1; done"])
    assert wait_until(lambda: kubelet.exec(stubborn, ["cat", "/tmp/trapped"]).exit_code == 0)
    started = time.monotonic()
    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=stubborn, timeout=1))
    assert time.monotonic() - started >= 1
    assert kubelet.status(stubborn).exit_code == 128 + signal.SIGKILL
    # a timeout of 0 kills at once
    quick = kubelet.run(pod_id, pod, "quick", ["sleep", "1000"])
    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=quick, timeout=0))
    assert kubelet.status(quick).exit_code == 128 + signal.SIGKILL
    # a created container is left alone by stop, and can be removed
    created = kubelet.create(pod_id, pod, "created", ["sleep", "1000"])
    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=created, timeout=0))
    assert kubelet.status(created).state == cri.CONTAINER_CREATED
    kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=created))


def test_start_twice_and_missing_ids(kubelet: Kubelet) -> None:
    pod_id, pod = kubelet.pod()
    container_id = kubelet.run(pod_id, pod, "app", ["sleep", "1000"])
    with pytest.raises(grpc.RpcError) as err:
        kubelet.rt.StartContainer(cri.StartContainerRequest(container_id=container_id))
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id="nosuchcontainer", timeout=1))
    kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id="nosuchcontainer"))
    for call in (lambda: kubelet.status("nosuchcontainer"),
                 lambda: kubelet.rt.StartContainer(cri.StartContainerRequest(container_id="nosuchcontainer")),
                 lambda: kubelet.exec("nosuchcontainer", ["true"])):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_duplicate_container_name(kubelet: Kubelet) -> None:
    pod_id, pod = kubelet.pod()
    first = kubelet.create(pod_id, pod, "app", ["sleep", "1000"])
    with pytest.raises(grpc.RpcError) as err:
        kubelet.create(pod_id, pod, "app", ["sleep", "1000"])
    assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS and first in (err.value.details() or "")
    kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=first))
    kubelet.create(pod_id, pod, "app", ["sleep", "1000"])  # the name is free again


def test_exec_sync_timeout(kubelet: Kubelet) -> None:
    pod_id, pod = kubelet.pod()
    container_id = kubelet.run(pod_id, pod, "app", ["sleep", "1000"])
    with pytest.raises(grpc.RpcError) as err:
        kubelet.exec(container_id, ["sleep", "60"], timeout=1)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # the exec's process was killed: only the container's own sleep is left
    ps = kubelet.exec(container_id, ["busybox", "ps", "-o", "args"]).stdout.decode()
    assert "sleep 60" not in ps and "sleep 1000" in ps


def test_containers_in_a_pod_share_network_ipc_and_pid(kubelet: Kubelet) -> None:
    pod_id, pod = kubelet.pod()
    server = kubelet.run(pod_id, pod, "server", ["sh", "-c", "echo hi-from-server | busybox nc -l -p 8080"])
    client = kubelet.run(pod_id, pod, "client", ["sleep", "1000"])

    def ns(container_id: str, kind: str) -> str:
        return kubelet.exec(container_id, ["busybox", "readlink", f"/proc/self/ns/{kind}"]).stdout.decode()

    for kind in ("net", "ipc", "uts", "pid"):
        assert ns(server, kind) == ns(client, kind), kind
    assert ns(server, "mnt") != ns(client, "mnt")
    assert wait_until(lambda: kubelet.exec(client, ["busybox", "nc", "127.0.0.1", "8080"]).stdout
                      == b"hi-from-server\n", 10)
    # the pod's /dev/shm is one tmpfs for both (the server has exited by now: write from a third container)
    writer = kubelet.run(pod_id, pod, "writer", ["sh", "-c", "echo shared > /dev/shm/x; exec sleep 1000"])
    assert wait_until(lambda: kubelet.exec(writer, ["cat", "/dev/shm/x"]).exit_code == 0)
    assert kubelet.exec(client, ["cat", "/dev/shm/x"]).stdout == b"shared\n"
    # one PID namespace: the client sees its own sleep and the pod's init as PID 1
    ps = kubelet.exec(client, ["busybox", "ps", "-o", "pid,args"]).stdout.decode()
    assert "sleep 1000" in ps
    assert ps.splitlines()[1].split()[0] == "1"


def test_container_pid_namespace(kubelet: Kubelet) -> None:
    pod_id, pod = kubelet.pod()
    opts = cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(
        namespace_options=cri.NamespaceOption(pid=cri.CONTAINER)))
    a = kubelet.run(pod_id, pod, "a", ["sleep", "1001"], linux=opts)
    b = kubelet.run(pod_id, pod, "b", ["sleep", "1002"], linux=opts)
    # StartContainer answers once the init is let go: its exec of `sleep` follows (runc's start is the same)
    assert wait_until(lambda: "sleep 1002" in kubelet.exec(b, ["busybox", "ps", "-o", "args"]).stdout.decode())
    ps = kubelet.exec(b, ["busybox", "ps", "-o", "args"]).stdout.decode()
    assert "sleep 1002" in ps and "sleep 1001" not in ps
    assert a != b


def test_host_namespaces(kubelet: Kubelet) -> None:
    config = pod_config("hostpod")
    config.log_directory = str(kubelet.log_dir / "hostpod")
    config.linux.security_context.namespace_options.CopyFrom(
        cri.NamespaceOption(network=cri.NODE, ipc=cri.NODE, pid=cri.NODE))
    pod_id = kubelet.pods.run(config)
    opts = cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(
        namespace_options=cri.NamespaceOption(network=cri.NODE, ipc=cri.NODE, pid=cri.NODE)))
    container_id = kubelet.run(pod_id, config, "app", ["sleep", "1000"], linux=opts)
    for kind in ("net", "ipc", "pid"):
        inside = kubelet.exec(container_id, ["busybox", "readlink", f"/proc/self/ns/{kind}"]).stdout.decode()
        assert inside.strip() == os.readlink(f"/proc/self/ns/{kind}"), kind
    assert kubelet.exec(container_id, ["busybox", "hostname"]).stdout.decode().strip() == os.uname().nodename


def test_pod_sysctls_the_old_rulebooks_disagreed_on(pods: Pods, test_images: TestImages, tmp_path: Path) -> None:
    """kernel.domainname (UTS) and kernel.shm_next_id (IPC) are namespaced: the pod runs, its containers are
    created in it, and they see the pod's values (RunPodSandbox once took them and CreateContainer refused)."""
    kubelet = Kubelet(pods, test_images, tmp_path / "logs")
    config = pod_config("sysctls")
    config.log_directory = str(kubelet.log_dir / "sysctls")
    config.linux.sysctls.update({"kernel.domainname": "pods.example", "kernel.shm_next_id": "4242"})
    pod_id = kubelet.pods.run(config)
    container_id = kubelet.run(pod_id, config, "app", ["sleep", "1000"])
    assert kubelet.exec(container_id, ["cat", "/proc/sys/kernel/domainname"]).stdout == b"pods.example\n"
    assert kubelet.exec(container_id, ["cat", "/proc/sys/kernel/shm_next_id"]).stdout == b"4242\n"
    assert Path("/proc/sys/kernel/domainname").read_text() != "pods.example\n"  # the node's is untouched


def test_update_container_resources_through_the_executor(kubelet: Kubelet) -> None:
    """UpdateContainerResources reaches the container's cgroup through its shim and executor; the resources in
    force are what ContainerStatus reports; a limit this node cannot enforce is refused by default and leaves
    the record as it was."""
    pod_id, pod = kubelet.pod()
    container_id = kubelet.run(pod_id, pod, "app", ["sleep", "1000"])
    info = json.loads(kubelet.rt.ContainerStatus(cri.ContainerStatusRequest(
        container_id=container_id, verbose=True)).info["info"])
    cgroup = CgroupV2Manager.discover().cgroup(info["cgroup"]).dir
    resources = cri.LinuxContainerResources(unified={"cgroup.max.descendants": "13"})
    kubelet.rt.UpdateContainerResources(cri.UpdateContainerResourcesRequest(container_id=container_id,
                                                                             linux=resources))
    assert (cgroup / "cgroup.max.descendants").read_text().strip() == "13"
    assert kubelet.status(container_id).resources.linux == resources
    if "memory" not in (cgroup.parent / "cgroup.subtree_control").read_text().split():
        with pytest.raises(grpc.RpcError) as err:
            kubelet.rt.UpdateContainerResources(cri.UpdateContainerResourcesRequest(
                container_id=container_id, linux=cri.LinuxContainerResources(memory_limit_in_bytes=64 << 20)))
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert kubelet.status(container_id).resources.linux == resources


def test_missing_controller_is_an_error_and_leaves_nothing(kubelet: Kubelet) -> None:
    pod_id, pod = kubelet.pod()
    with pytest.raises(grpc.RpcError) as err:
        kubelet.create(pod_id, pod, "limited", ["sleep", "1"], linux=cri.LinuxContainerConfig(
            resources=cri.LinuxContainerResources(memory_limit_in_bytes=64 << 20)))
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "memory" in (err.value.details() or "")
    assert kubelet.rt.ListContainers(cri.ListContainersRequest()).containers == []
    assert list((kubelet.pods.daemon.state / "containers").glob("*")) == []
    assert list((kubelet.pods.daemon.root / "containers").glob("*")) == []


@pytest.mark.parametrize("point", CREATE_FAIL_POINTS)
def test_failure_mid_create_leaves_nothing(tmp_path: Path, test_images: TestImages, point: str) -> None:
    with running_pods(tmp_path, debug_config=f'fail_points = ["{point}"]\n') as p:
        kubelet = Kubelet(p, test_images, tmp_path / "logs")
        pod_id, pod = kubelet.pod()
        before = set(mounts_under(tmp_path))
        with pytest.raises(grpc.RpcError) as err:
            kubelet.create(pod_id, pod, "app", ["sleep", "1000"])
        assert f"injected failure at {point}" in (err.value.details() or "")
        assert kubelet.rt.ListContainers(cri.ListContainersRequest()).containers == []
        assert set(mounts_under(tmp_path)) == before
        containers_dir = p.daemon.state / "containers"
        assert not containers_dir.exists() or list(containers_dir.iterdir()) == []
        assert list((p.daemon.root / "containers").glob("*")) == []
        kubelet.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        assert wait_until(lambda: p.leaks() == [], 5), p.leaks()


def making_left(pods: Pods, container_id: str, cgroup: str) -> list[str]:
    """What making the container leaves (the executor's create through its shim): mounts under its bundle,
    processes that name its bundle (its shim, its init), its cgroup."""
    assert pods.daemon.proc is not None
    bundle = pods.daemon.state / "containers" / container_id
    left = [f"mount {m}" for m in mounts_under(bundle, pods.daemon.proc.pid)]
    left += [f"process {p}" for p in processes_mentioning(str(bundle))]
    if (CgroupV2Manager.discover().mount / cgroup.lstrip("/")).exists():
        left.append(f"cgroup {cgroup}")
    return left


def verbose_info(kubelet: Kubelet, container_id: str) -> dict[str, object]:
    info = kubelet.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id, verbose=True)).info
    return dict(json.loads(info["info"]))


def test_a_container_is_made_at_start(kubelet: Kubelet) -> None:
    """CreateContainer records the container and readies its shim; the executor makes it (cgroup, init) at
    StartContainer. Until then every RPC takes it as created: status, stats (nothing used yet), stop (nothing
    to do), exec (refused), an update of its limits (they go into its spec: it is made with them), removal
    (its shim goes), and its pod's stop and removal."""
    pod_id, pod = kubelet.pod()
    container_id = kubelet.create(pod_id, pod, "app", ["sleep", "1000"])
    info = verbose_info(kubelet, container_id)
    cgroup = str(info["cgroup"])
    assert kubelet.status(container_id).state == cri.CONTAINER_CREATED and info["pid"] == 0
    assert not (CgroupV2Manager.discover().mount / cgroup.lstrip("/")).exists()
    stats = kubelet.rt.ContainerStats(cri.ContainerStatsRequest(container_id=container_id)).stats
    assert stats.attributes.id == container_id and stats.cpu.usage_core_nano_seconds.value == 0
    listed = kubelet.rt.ListContainerStats(cri.ListContainerStatsRequest()).stats
    assert [s.attributes.id for s in listed] == [container_id]
    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=container_id, timeout=0))
    assert kubelet.status(container_id).state == cri.CONTAINER_CREATED
    with pytest.raises(grpc.RpcError) as err:
        kubelet.exec(container_id, ["true"])
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    resources = cri.LinuxContainerResources(unified={"cgroup.max.descendants": "13"})
    kubelet.rt.UpdateContainerResources(cri.UpdateContainerResourcesRequest(container_id=container_id,
                                                                             linux=resources))
    assert kubelet.status(container_id).resources.linux == resources
    kubelet.rt.StartContainer(cri.StartContainerRequest(container_id=container_id))
    assert kubelet.status(container_id).state == cri.CONTAINER_RUNNING
    assert int(str(verbose_info(kubelet, container_id)["pid"])) > 0
    cgroup_dir = CgroupV2Manager.discover().cgroup(cgroup).dir
    assert (cgroup_dir / "cgroup.max.descendants").read_text().strip() == "13"  # made with the update
    assert kubelet.exec(container_id, ["echo", "ok"]).stdout == b"ok\n"

    removed = kubelet.create(pod_id, pod, "removed", ["sleep", "1000"])
    removed_cgroup = str(verbose_info(kubelet, removed)["cgroup"])
    kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=removed))
    assert wait_until(lambda: making_left(kubelet.pods, removed, removed_cgroup) == [], 10)
    assert [c.id for c in kubelet.rt.ListContainers(cri.ListContainersRequest()).containers] == [container_id]

    kubelet.create(pod_id, pod, "left", ["sleep", "1000"])  # goes with its pod
    kubelet.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    kubelet.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert wait_until(lambda: kubelet.pods.leaks() == [], 10), kubelet.pods.leaks()


@pytest.mark.parametrize("point", MAKING_FAIL_POINTS)
def test_failure_mid_making_leaves_nothing(tmp_path: Path, test_images: TestImages, point: str) -> None:
    """A StartContainer that fails while it makes the container leaves nothing of the making (shim, init,
    cgroup, rootfs mount) and the container EXITED with exit code 128, reason StartError and the error, as
    containerd's; its removal leaves nothing at all."""
    with running_pods(tmp_path, debug_config=f'fail_points = ["{point}"]\n') as p:
        kubelet = Kubelet(p, test_images, tmp_path / "logs")
        pod_id, pod = kubelet.pod()
        container_id = kubelet.create(pod_id, pod, "app", ["sleep", "1000"])
        cgroup = str(verbose_info(kubelet, container_id)["cgroup"])
        with pytest.raises(grpc.RpcError) as err:
            kubelet.rt.StartContainer(cri.StartContainerRequest(container_id=container_id))
        assert f"injected failure at {point}" in (err.value.details() or "")
        status = kubelet.status(container_id)
        assert (status.state, status.exit_code, status.reason) == (cri.CONTAINER_EXITED, 128, "StartError")
        assert f"injected failure at {point}" in status.message and status.finished_at > 0
        # (a shim answers its shutdown, then exits)
        assert wait_until(lambda: making_left(p, container_id, cgroup) == [], 5), making_left(p, container_id, cgroup)
        with pytest.raises(grpc.RpcError) as err:
            kubelet.rt.StartContainer(cri.StartContainerRequest(container_id=container_id))
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=container_id))
        kubelet.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        assert wait_until(lambda: p.leaks() == [], 5), p.leaks()


def test_crispd_killed_while_containers_run(kubelet: Kubelet) -> None:
    daemon = kubelet.pods.daemon
    pod_id, pod = kubelet.pod()
    talker = kubelet.run(pod_id, pod, "talker",
                         ["sh", "-c", "i=0; while :; do echo line $i; i=$((i+1)); sleep 0.05; done"])
    quitter = kubelet.run(pod_id, pod, "quitter", ["sh", "-c", "sleep 2; exit 5"])
    log_path = Path(kubelet.status(talker).log_path)

    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    size = log_path.stat().st_size
    assert wait_until(lambda: log_path.stat().st_size > size + 200, 10)  # the shim keeps logging
    time.sleep(2.5)  # the quitter exits while nobody listens
    daemon.start()
    kubelet.rt = daemon.runtime

    assert kubelet.status(talker).state == cri.CONTAINER_RUNNING
    status = kubelet.status(quitter)
    assert (status.state, status.exit_code, status.reason) == (cri.CONTAINER_EXITED, 5, "Error")
    assert kubelet.exec(talker, ["echo", "still here"]).stdout == b"still here\n"
    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=talker, timeout=5))
    assert kubelet.status(talker).state == cri.CONTAINER_EXITED
    lines = [text for _, tag, text in read_log(log_path) if tag == "F"]
    numbers = [int(t.split()[1]) for t in lines]
    assert numbers == list(range(len(numbers)))  # nothing lost while crispd was away


def test_a_killed_shim_is_reported(kubelet: Kubelet) -> None:
    pod_id, pod = kubelet.pod()
    container_id = kubelet.run(pod_id, pod, "app", ["sleep", "1000"])
    bundle = kubelet.pods.daemon.state / "containers" / container_id
    shim_pid = json.loads((bundle / "shim.json").read_text())["pid"]
    os.kill(shim_pid, signal.SIGKILL)
    status = kubelet.wait_exited(container_id)
    assert status.reason and status.exit_code != 0
    kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=container_id))
    assert kubelet.rt.ListContainers(cri.ListContainersRequest()).containers == []
    # the dead shim's remains go with the removal's cleanup, which runs after the answer
    assert kubelet.pods.cleaned_up(container_id)
    assert not bundle.exists()


@pytest.mark.parametrize("policy", [cri.Merge, cri.Strict])
def test_supplemental_groups_policy(kubelet: Kubelet, policy: int) -> None:
    assert kubelet.rt.Status(cri.StatusRequest()).features.supplemental_groups_policy
    pod_id, pod = kubelet.pod()
    sc = cri.LinuxContainerSecurityContext(run_as_user=cri.Int64Value(value=33), supplemental_groups=[4242],
                                           supplemental_groups_policy=policy)  # type: ignore[arg-type]
    container_id = kubelet.run(pod_id, pod, "app", ["sleep", "1000"], linux=cri.LinuxContainerConfig(
        security_context=sc))
    groups = kubelet.exec(container_id, ["id", "-G"]).stdout.decode().split()
    status_groups = list(kubelet.status(container_id).user.linux.supplemental_groups)
    # the image's /etc/group makes www-data (33) a member of audio (29): Merge adds it, Strict does not
    expected = ["33", "29", "4242"] if policy == cri.Merge else ["33", "4242"]
    assert sorted(groups) == sorted(expected)
    assert sorted(str(g) for g in status_groups) == sorted(expected)


def test_create_retry_after_the_caller_gave_up(tmp_path: Path, test_images: TestImages) -> None:
    with running_pods(tmp_path, debug_config='[debug.delay_points]\n"create_container.shim" = 1500\n') as p:
        kubelet = Kubelet(p, test_images, tmp_path / "logs")
        pod_id, pod = kubelet.pod()
        config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="slow"),
                                     image=cri.ImageSpec(image=test_images.busybox), command=["sleep", "1000"])
        request = cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
        with pytest.raises(grpc.RpcError) as err:
            kubelet.rt.CreateContainer(request, timeout=0.5)
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_until(lambda: len(kubelet.rt.ListContainers(cri.ListContainersRequest()).containers) == 1)
        created = kubelet.rt.ListContainers(cri.ListContainersRequest()).containers[0].id
        assert kubelet.rt.CreateContainer(request).container_id == created
        with pytest.raises(grpc.RpcError) as err:
            kubelet.rt.CreateContainer(request)
        assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
        kubelet.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        assert wait_until(lambda: p.leaks() == [], 5), p.leaks()


def test_an_image_removed_while_a_container_is_created_from_it_stays_for_it(tmp_path: Path,
                                                                            test_images: TestImages) -> None:
    """A RemoveImage that comes while CreateContainer is under way, after its image lookup: the image goes, its
    snapshots stay for the container, which StartContainer makes from them, and go once it is removed. (critest
    -benchmark's image and pod+container benchmarks, run side by side, saw the start fail: the GC had taken the
    snapshot before the container's row counted as a user of it.)"""
    with running_pods(tmp_path, debug_config='[debug.delay_points]\n"create_container.dirs" = 1500\n') as p:
        kubelet = Kubelet(p, test_images, tmp_path / "logs")
        status = p.daemon.images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=test_images.busybox),
                                                                    verbose=True))
        snapshots = [Path(d) for d in json.loads(status.info["info"])["snapshots"]]
        assert snapshots and all(d.is_dir() for d in snapshots)
        pod_id, pod = kubelet.pod()
        outcome: list[str] = []

        def create() -> None:
            try:
                outcome.append(kubelet.create(pod_id, pod, "app", ["sleep", "1000"]))
            except grpc.RpcError as error:
                outcome.append(f"{error.code()}: {error.details()}")

        creating = threading.Thread(target=create)
        creating.start()
        assert wait_until(lambda: any((p.daemon.state / "containers").glob("*")), 10)  # under way, past its lookup
        p.daemon.images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=test_images.busybox)))
        creating.join(30)
        [container_id] = outcome
        assert all(d.is_dir() for d in snapshots), container_id
        kubelet.rt.StartContainer(cri.StartContainerRequest(container_id=container_id))
        assert kubelet.exec(container_id, ["echo", "made"]).stdout == b"made\n"
        kubelet.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        assert wait_until(lambda: not any(d.exists() for d in snapshots), 15)  # released with the container
        assert wait_until(lambda: p.leaks() == [], 5), p.leaks()


def test_pod_removal_waits_for_a_creation_in_it(tmp_path: Path, test_images: TestImages) -> None:
    """A kubelet that gave up on a CreateContainer (a timeout, a restart) may remove the pod while crisp still
    creates the container: the removal takes that container along instead of leaving it behind in no pod."""
    with running_pods(tmp_path, debug_config='[debug.delay_points]\n"create_container.record" = 1500\n') as p:
        kubelet = Kubelet(p, test_images, tmp_path / "logs")
        pod_id, pod = kubelet.pod()
        config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="late"),
                                     image=cri.ImageSpec(image=test_images.busybox), command=["sleep", "1000"])
        outcome: list[object] = []

        def create() -> None:
            try:
                outcome.append(kubelet.rt.CreateContainer(cri.CreateContainerRequest(
                    pod_sandbox_id=pod_id, config=config, sandbox_config=pod)).container_id)
            except grpc.RpcError as error:
                outcome.append(error.code())

        creating = threading.Thread(target=create)
        creating.start()
        assert wait_until(lambda: any((p.daemon.state / "containers").glob("*")), 10)  # under way
        kubelet.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        creating.join(30)
        assert len(outcome) == 1 and outcome[0] != grpc.StatusCode.INTERNAL, outcome
        assert kubelet.rt.ListContainers(cri.ListContainersRequest()).containers == []
        assert wait_until(lambda: p.leaks() == [], 5), p.leaks()


@pytest.mark.parametrize("propagation", [cri.PROPAGATION_HOST_TO_CONTAINER, cri.PROPAGATION_BIDIRECTIONAL])
def test_mount_propagation(kubelet: Kubelet, tmp_path: Path, propagation: int) -> None:
    shared = tmp_path / "shared"
    (shared / "from-host").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True)
    try:
        subprocess.run(["mount", "--make-rshared", str(shared)], check=True)
        config = pod_config("prop")
        config.log_directory = str(kubelet.log_dir / "prop")
        config.linux.security_context.privileged = True
        pod_id = kubelet.pods.run(config)
        container_id = kubelet.run(
            pod_id, config, "app", ["sleep", "1000"],
            mounts=[cri.Mount(container_path="/vol", host_path=str(shared), propagation=propagation)],
            linux=cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(privileged=True)))
        # host -> container
        subprocess.run(["mount", "-t", "tmpfs", "crisp-prop", str(shared / "from-host")], check=True)
        (shared / "from-host" / "marker").write_text("x")
        assert kubelet.exec(container_id, ["ls", "/vol/from-host"]).stdout == b"marker\n"
        # container -> host only when bidirectional
        result = kubelet.exec(container_id, ["sh", "-c", "mkdir -p /vol/from-ctr && mount -t tmpfs t /vol/from-ctr "
                                             "&& touch /vol/from-ctr/inside"])
        assert result.exit_code == 0, result.stderr
        seen_on_host = (shared / "from-ctr" / "inside").exists()
        assert seen_on_host is (propagation == cri.PROPAGATION_BIDIRECTIONAL)
        kubelet.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    finally:
        for m in sorted(mounts_under(shared), reverse=True):
            subprocess.run(["umount", "-l", m], check=False)
