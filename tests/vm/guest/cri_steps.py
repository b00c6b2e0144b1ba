"""What a kubelet does through CRI for one container, in a call each, for the guest tests that drive a crispd (the
limits of tests/vm/guest, the systemd driver of tests/vm/guest_systemd)."""

from __future__ import annotations

import contextlib
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from cri import api as cri
from tests.cri.pods import Pods
from tests.imagetools import busybox_image
from tests.leaks import mounts_under
from tests.registrytools import Pusher, running_registry
from tests.vm.guest.support import wait_until

# the host's network (limits need no pod network) and a PID namespace per container (no pod init to start), for the
# pod and, as the kubelet sends them, for each of its containers
NAMESPACES = cri.NamespaceOption(network=cri.NODE, pid=cri.CONTAINER)


def pod_config(name: str, namespace: str, uid: str, log_root: Path, cgroup_parent: str = "") -> cri.PodSandboxConfig:
    """A pod as the kubelet sends it, with its own log directory under `log_root` (made here)."""
    log_directory = log_root / f"{name}-{secrets.token_hex(4)}"
    log_directory.mkdir(parents=True)
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, namespace=namespace, uid=uid),
        log_directory=str(log_directory),
        linux=cri.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent,
            security_context=cri.LinuxSandboxSecurityContext(namespace_options=NAMESPACES)))


def run_container(rt: cri.RuntimeServiceStub, image: str, pod_id: str, pod: cri.PodSandboxConfig, name: str,
                  command: list[str], resources: cri.LinuxContainerResources | None = None) -> str:
    """CreateContainer (log `<name>.log` in the pod's log directory) and StartContainer; the container's id."""
    linux = cri.LinuxContainerConfig(
        security_context=cri.LinuxContainerSecurityContext(namespace_options=NAMESPACES))
    if resources is not None:
        linux.resources.CopyFrom(resources)
    config = cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name=name), image=cri.ImageSpec(image=image), command=command,
        log_path=f"{name}.log", linux=linux)
    container_id = str(rt.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod), timeout=120).container_id)
    rt.StartContainer(cri.StartContainerRequest(container_id=container_id), timeout=120)
    return container_id


def container_status(rt: cri.RuntimeServiceStub, container_id: str) -> cri.ContainerStatus:
    response: cri.ContainerStatusResponse = rt.ContainerStatus(
        cri.ContainerStatusRequest(container_id=container_id), timeout=30)
    return response.status


def wait_exited(rt: cri.RuntimeServiceStub, container_id: str) -> cri.ContainerStatus:
    wait_until(lambda: container_status(rt, container_id).state == cri.CONTAINER_EXITED, 120,
               f"container {container_id} to be reported exited", interval=0.2)
    return container_status(rt, container_id)


@contextlib.contextmanager
def served_crispd(base: Path) -> Iterator[tuple[Pods, str]]:
    """A crispd under `base` (the emulated guest gets 120 s to start it) with busybox pulled from a loopback
    registry: (its Pods, the image's reference). Afterwards nothing may be left and crispd must stop cleanly."""
    with contextlib.ExitStack() as stack:
        registry = stack.enter_context(running_registry(base / "registry"))
        Pusher(registry.url).image("crisp/busybox", busybox_image(), "latest")
        (base / "crispd").mkdir()
        pods = Pods(base / "crispd")
        stack.callback(pods.cleanup_host)
        stack.callback(_unmount_all_under, base / "crispd")
        pods.daemon.start(timeout=120)
        code: list[int] = []
        stack.callback(lambda: code.append(pods.daemon.stop(signal.SIGTERM, timeout=60)))
        image = f"{registry.host}/crisp/busybox:latest"
        pods.daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=image)), timeout=120)
        yield pods, image
        leaks = pods.leaks()
        stack.close()
        assert leaks == []
        assert code == [0], pods.daemon.log()


def _unmount_all_under(path: Path) -> None:
    for target in reversed(mounts_under(path)):
        subprocess.run(["umount", "-l", target], check=False)
