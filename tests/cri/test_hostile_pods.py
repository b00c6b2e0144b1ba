"""Hostile pod specs and images against a real crispd: real images from the loopback registry, real shims and
executors (built-in and runc). Each attack gets a clear gRPC error (or works the way runc makes it work) and
leaves nothing behind (the `pods` fixture checks)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from runtime.fstree import remove_tree
from tests.cri.conftest import TestImages
from tests.cri.pods import Pods, pod_config
from tests.imagetools import Image, busybox_image, directory, image, layer, symlink
from tests.registrytools import Pusher

pytestmark = pytest.mark.root


@dataclass(frozen=True)
class Hostile:
    procl: str  # busybox with /procl -> /proc
    links: str  # busybox with a working dir and a volume target through dangling symlinks


@pytest.fixture(scope="module")
def hostile(test_images: TestImages) -> Iterator[Hostile]:
    push = Pusher(f"http://{test_images.registry}")
    base = busybox_image()

    def build(repo: str, extra: Image) -> str:
        push.image(repo, extra, "v1")
        return f"{test_images.registry}/{repo}:v1"

    procl = image([*base.layers, layer([symlink("procl", "/proc")])], docker=True, cmd=["sleep", "1000"])
    links = image([*base.layers, layer([symlink("app", "/srv/app"), symlink("data", "srv/data"),
                                         directory("srv")])], docker=True, cmd=["sleep", "1000"],
                  config={"WorkingDir": "/app/bin"})
    yield Hostile(procl=build("crisp/hostile-procl", procl), links=build("crisp/hostile-links", links))


class Client:
    def __init__(self, pods: Pods, tmp_path: Path) -> None:
        self.pods = pods
        self.rt = pods.daemon.runtime
        self.log_dir = tmp_path / "logs"

    def pull(self, ref: str) -> None:
        self.pods.daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=60)

    def pod(self, name: str = "web") -> tuple[str, cri.PodSandboxConfig]:
        config = pod_config(name)
        config.log_directory = str(self.log_dir / name)
        return self.pods.run(config), config

    def run(self, pod_id: str, pod: cri.PodSandboxConfig, ref: str, command: list[str] | None = None,
            **kwargs: object) -> str:
        config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="app"), image=cri.ImageSpec(image=ref),
                                     command=command or [], log_path="app.log", **kwargs)  # type: ignore[arg-type]
        cid = str(self.rt.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod)).container_id)
        self.rt.StartContainer(cri.StartContainerRequest(container_id=cid))
        return cid

    def exec(self, cid: str, cmd: list[str], timeout: int = 10) -> cri.ExecSyncResponse:
        return self.rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout))


@pytest.fixture(params=["", "runc"], ids=["builtin", "runc"])
def client(request: pytest.FixtureRequest, pods: Pods, tmp_path: Path) -> Client:
    pods.handler = request.param
    return Client(pods, tmp_path)


def _rpc_error(fn: object, *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value


@pytest.mark.parametrize("container_path", ["/procl/self/fd", "/procl/sys/kernel"])
def test_a_volume_through_an_image_symlink_never_lands_in_proc(client: Client, hostile: Hostile, tmp_path: Path,
                                                               container_path: str) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    for n in range(64):
        (volume / str(n)).symlink_to("/decoy")
    client.pull(hostile.procl)
    pod_id, pod = client.pod()
    mount = cri.Mount(container_path=container_path, host_path=str(volume))
    err = _rpc_error(lambda: client.run(pod_id, pod, hostile.procl, mounts=[mount]))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "/proc" in (err.details() or "")
    assert client.rt.ListContainers(cri.ListContainersRequest()).containers == [] or all(
        c.state != cri.CONTAINER_RUNNING for c in client.rt.ListContainers(cri.ListContainersRequest()).containers)


def test_working_dir_and_volume_through_dangling_symlinks(client: Client, hostile: Hostile,
                                                          tmp_path: Path) -> None:
    """The image's WorkingDir /app/bin with /app -> /srv/app (missing), a volume at /data -> srv/data (missing):
    both are made inside the rootfs where the symlinks point, as runc makes them."""
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "hello").write_text("from the volume\n")
    client.pull(hostile.links)
    pod_id, pod = client.pod()
    cid = client.run(pod_id, pod, hostile.links, mounts=[cri.Mount(container_path="/data", host_path=str(volume))])
    result = client.exec(cid, ["sh", "-c", "pwd; cat /data/hello /srv/data/hello"])
    assert (result.exit_code, result.stderr) == (0, b"")
    assert result.stdout == b"/srv/app/bin\nfrom the volume\nfrom the volume\n"
    assert not Path("/srv/app").exists() and not Path("/srv/data").exists()


def test_a_writable_layer_1500_directories_deep_is_measured_and_removed(client: Client, hostile: Hostile) -> None:
    """Walks and removals that recurse once per level (shutil.rmtree, os.walk) die past ~1,000 levels."""
    client.pull(hostile.links)
    pod_id, pod = client.pod()
    cid = client.run(pod_id, pod, hostile.links)
    container_dir = client.pods.daemon.root / "containers" / cid
    try:
        deep = client.exec(cid, ["sh", "-c", "cd /; i=0; while [ $i -lt 1500 ]; do mkdir d; cd d || exit 1; "
                                             "i=$((i+1)); done; echo done"], timeout=120)
        assert deep.stdout == b"done\n", deep.stderr
        stats = client.rt.ContainerStats(cri.ContainerStatsRequest(container_id=cid)).stats
        assert stats.writable_layer.inodes_used.value > 1500
        client.rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=5))
        client.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid))
        assert client.pods.cleaned_up(cid, 60)  # its layer goes after the answer
        assert not container_dir.exists()
    finally:
        # never leave it to pytest's own cleanup of tmp dirs (shutil.rmtree: RecursionError for every session)
        try:
            client.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        finally:
            remove_tree(container_dir, ignore_errors=True)


def test_a_container_sees_only_its_own_cgroup(client: Client, hostile: Hostile) -> None:
    """On this hybrid host (cgroup v2 beside v1) containers got no cgroup namespace: their /sys/fs/cgroup was the
    host's whole cgroup2 tree, every pod's cgroup included."""
    client.pull(hostile.links)
    pod_id, pod = client.pod()
    cid = client.run(pod_id, pod, hostile.links)
    result = client.exec(cid, ["sh", "-c", "ls /sys/fs/cgroup; echo; cat /proc/self/cgroup"])
    listing, _, own = result.stdout.decode().partition("\n\n")
    base = client.pods.cgroup_base.strip("/")
    assert base not in listing.split(), listing  # the host's tree (the test's cgroup base is at its root)
    assert "cgroup.procs" in listing.split()
    assert "0::/" in own.splitlines(), own
