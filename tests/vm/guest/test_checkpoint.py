"""CheckpointContainer under Debian 12's kernel, where `criu check` passes: a running container is dumped by CRIU
into an archive in checkpointctl's layout, and keeps running.

One crispd and a loopback registry serve the module (see test_crispd_limits.py). Two pods: one on the host's
network with a PID namespace per container (CRIU dumps the container's own PID namespace), and one with its own
network namespace and a shared PID namespace (the pod's pinned network and PID namespaces are external to CRIU).
Each under the built-in executor, runc, and crun (which refuses: Debian's is built without CRIU). The archive's
layout is checked here in Python, and read by `checkpointctl show` (scripts/build-k8s-tools builds it;
tests/vm/inputs.py puts it into the io share when this file is selected)."""

from __future__ import annotations

import json
import secrets
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc
import pytest

from cri import api as cri
from tests.cri.pods import Pods
from tests.vm.guest.cri_steps import container_status, served_crispd
from tests.vm.guest.support import wait_until

# leaves a file in its writable layer, deletes one of the image's (a whiteout), then sleeps
WORKLOAD = ["sh", "-c", "echo checkpointed > /tmp/marker; rm /bin/false; exec sleep 100000"]
CRIU_IMAGES = ("inventory.img", "pstree.img")
# the built-in executor (crispd calls CRIU), and the OCI runtimes' own `checkpoint`
HANDLERS = ("builtin", "runc", "crun")
# what a runtime that cannot checkpoint answers: Debian 12's crun (1.8.1) is built without CRIU
REFUSED = {"crun": "crun checkpoint failed (status 1): unknown command checkpoint"}
READ_ONLY_DIR = "/mnt/host"  # the checkout, shared read-only
INPUTS = Path("/run/crisp-vm/io/inputs")
LAYOUTS = {
    "own-pid-ns": cri.NamespaceOption(network=cri.NODE, pid=cri.CONTAINER),
    "pod-net-shared-pid": cri.NamespaceOption(network=cri.POD, pid=cri.POD),
}


@dataclass
class Node:
    pods: Pods
    image: str
    base: Path


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    base = tmp_path_factory.mktemp("crispd-checkpoint")
    with served_crispd(base) as (pods, image):
        yield Node(pods, image, base)


@pytest.mark.parametrize("handler", HANDLERS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_checkpoint_of_a_running_container(node: Node, layout: str, handler: str, tmp_path: Path,
                                           record_property: Callable[[str, object], None]) -> None:
    rt = node.pods.daemon.runtime
    namespaces = LAYOUTS[layout]
    name = f"ckpt-{secrets.token_hex(3)}"
    (node.base / "logs" / name).mkdir(parents=True)
    pod = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, namespace="ckpt", uid=f"uid-{name}"),
        log_directory=str(node.base / "logs" / name),
        linux=cri.LinuxPodSandboxConfig(security_context=cri.LinuxSandboxSecurityContext(
            namespace_options=namespaces)))
    pod_id = node.pods.run(pod, handler="" if handler == "builtin" else handler)
    try:
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name="app"), image=cri.ImageSpec(image=node.image), command=WORKLOAD,
            log_path="app.log", linux=cri.LinuxContainerConfig(
                security_context=cri.LinuxContainerSecurityContext(namespace_options=namespaces)))
        container_id = str(rt.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod), timeout=120).container_id)
        rt.StartContainer(cri.StartContainerRequest(container_id=container_id), timeout=120)
        wait_until(lambda: _exec(rt, container_id, ["cat", "/tmp/marker"]) == b"checkpointed\n", 60,
                   "the workload to write its marker", interval=0.5)
        pid = json.loads(rt.ContainerStatus(cri.ContainerStatusRequest(
            container_id=container_id, verbose=True), timeout=30).info["info"])["pid"]

        if handler in REFUSED:
            with pytest.raises(grpc.RpcError) as refused:
                rt.CheckpointContainer(cri.CheckpointContainerRequest(
                    container_id=container_id, location=str(tmp_path / "app.tar"), timeout=300), timeout=360)
            assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert REFUSED[handler] in (refused.value.details() or ""), refused.value.details()
            assert list(tmp_path.iterdir()) == []
            assert container_status(rt, container_id).state == cri.CONTAINER_RUNNING
            record_property("summary", f"{handler}, {layout}: refused: {refused.value.details()}")
            return
        # a dump whose archive cannot be written (the checkout's share is read-only) leaves nothing behind
        with pytest.raises(grpc.RpcError) as refused:
            rt.CheckpointContainer(cri.CheckpointContainerRequest(
                container_id=container_id, location=f"{READ_ONLY_DIR}/{name}.tar", timeout=300), timeout=360)
        assert "Read-only file system" in (refused.value.details() or ""), refused.value.details()
        assert not list(Path(READ_ONLY_DIR).glob(f"*{name}*"))
        staging = node.pods.daemon.state / "checkpoints"
        assert not staging.exists() or list(staging.iterdir()) == []

        location = tmp_path / "app.tar"
        rt.CheckpointContainer(cri.CheckpointContainerRequest(
            container_id=container_id, location=str(location), timeout=300), timeout=360)

        with tarfile.open(location) as archive:
            names = set(archive.getnames())
            for part in ("checkpoint", "dump.log", "config.dump", "spec.dump", "rootfs-diff.tar", "deleted.files"):
                assert part in names, sorted(names)
            for image in CRIU_IMAGES:
                assert f"checkpoint/{image}" in names, sorted(names)
            config_dump = json.load(_member(archive, "config.dump"))
            spec_dump = json.load(_member(archive, "spec.dump"))
            deleted = json.load(_member(archive, "deleted.files"))
            with tarfile.open(fileobj=_member(archive, "rootfs-diff.tar")) as diff:
                marker = diff.extractfile("tmp/marker")
                assert marker is not None and marker.read() == b"checkpointed\n"
            images = sum(m.size for m in archive.getmembers() if m.name.startswith("checkpoint/"))
        assert config_dump["id"] == container_id and config_dump["name"] == "app"
        assert config_dump["runtime"] == handler
        assert config_dump["rootfsImageName"] == node.image and config_dump["createdTime"].endswith("Z")
        assert spec_dump["annotations"]["io.kubernetes.cri.container-name"] == "app"
        assert spec_dump["annotations"]["io.kubernetes.cri.sandbox-name"] == name
        assert "/bin/false" in deleted
        # left running: the same process, still answering
        status = container_status(rt, container_id)
        assert status.state == cri.CONTAINER_RUNNING
        assert json.loads(rt.ContainerStatus(cri.ContainerStatusRequest(
            container_id=container_id, verbose=True), timeout=30).info["info"])["pid"] == pid
        assert _exec(rt, container_id, ["cat", "/tmp/marker"]) == b"checkpointed\n"
        assert not staging.exists() or list(staging.iterdir()) == []
        assert sorted(p.name for p in tmp_path.iterdir()) == ["app.tar"]
        shown = _checkpointctl_show(location)
        assert "app" in shown and container_id[:12] in shown and handler in shown, shown
        record_property("summary", f"{handler}, {layout}: archive {location.stat().st_size >> 10} KiB, "
                                   f"CRIU images {images >> 10} KiB")
    finally:
        rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)


def _checkpointctl_show(archive: Path) -> str:
    missing = INPUTS / "missing"
    if missing.exists():
        pytest.fail(f"the host could not provide checkpointctl: {missing.read_text()}", pytrace=False)
    done = subprocess.run([str(INPUTS / "checkpointctl"), "show", str(archive)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _member(archive: tarfile.TarFile, name: str) -> IO[bytes]:
    member = archive.extractfile(name)
    assert member is not None, name
    return member


def _exec(rt: cri.RuntimeServiceStub, container_id: str, cmd: list[str]) -> bytes:
    try:
        response = rt.ExecSync(cri.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=30), timeout=60)
    except grpc.RpcError:  # not ready yet
        return b""
    return bytes(response.stdout) if response.exit_code == 0 else b""
