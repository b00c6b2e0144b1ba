"""crispd with the systemd cgroup driver under a real systemd: each pod crisp makes is a slice, each container (and
each shim) a scope, as `systemctl` shows them; the limits are unit properties and cgroup files, and the kernel
enforces them; live updates go through SetUnitProperties; `systemctl restart crispd` keeps every container running
(runc's too); once the pods are removed no crisp unit is left. Pods use the host's network (the CNI part is
test_service.py's), so that nothing here depends on the order of the files."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cri import api as cri
from tests.vm.guest.cri_steps import container_status, pod_config, run_container, wait_exited
from tests.vm.guest.support import HOLD, allocate_and_hold
from tests.vm.guest_systemd.conftest import Node, crisp_units, systemctl, unit_properties

MiB = 1 << 20
CGROUP = Path("/sys/fs/cgroup")
CONTAINERS = Path("/run/crisp/containers")  # crispd's state dir: a bundle per container, with shim.json
SLEEP = ["sleep", "100000"]


@dataclass
class Kubelet:
    node: Node
    pods: list[str] = field(default_factory=list)

    @property
    def rt(self) -> cri.RuntimeServiceStub:
        return self.node.runtime

    def pod(self, name: str, cgroup_parent: str = "", handler: str = "") -> tuple[str, cri.PodSandboxConfig]:
        config = pod_config(name, "systemd", f"{secrets.token_hex(4)}-{name}", Path("/tmp/crisp-pod-logs"),
                            cgroup_parent)
        pod_id = str(self.rt.RunPodSandbox(cri.RunPodSandboxRequest(config=config, runtime_handler=handler),
                                           timeout=120).pod_sandbox_id)
        self.pods.append(pod_id)
        return pod_id, config

    def run(self, pod_id: str, pod: cri.PodSandboxConfig, name: str, command: list[str],
            resources: cri.LinuxContainerResources | None = None) -> str:
        return run_container(self.rt, self.node.image, pod_id, pod, name, command, resources)

    def status(self, container_id: str) -> cri.ContainerStatus:
        return container_status(self.rt, container_id)

    def pid(self, container_id: str) -> int:
        info = self.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id, verbose=True),
                                       timeout=30).info
        return int(json.loads(info["info"])["pid"])

    def wait_exited(self, container_id: str) -> cri.ContainerStatus:
        return wait_exited(self.rt, container_id)

    def remove_all(self) -> None:
        for pod_id in self.pods:
            self.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
            self.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
        self.pods.clear()

    close = remove_all


@pytest.fixture
def kubelet(node: Node) -> Iterator[Kubelet]:
    """A Kubelet whose pods are all removed afterwards."""
    with contextlib.closing(Kubelet(node)) as made:
        yield made


def cgroup_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text().strip().removeprefix("0::")


def shim_pid(container_id: str) -> int:
    return int(json.loads((CONTAINERS / container_id / "shim.json").read_text())["pid"])


def test_pods_slices_and_scopes_as_systemd_shows_them(kubelet: Kubelet) -> None:
    pod_id, pod = kubelet.pod("web")
    pod_slice = f"crisp-pod{pod.metadata.uid.replace('-', '_')}.slice"
    assert unit_properties(pod_slice, "ActiveState", "ControlGroup") == {
        "ActiveState": "active", "ControlGroup": f"/crisp.slice/{pod_slice}"}
    limits = cri.LinuxContainerResources(memory_limit_in_bytes=64 * MiB, cpu_quota=50000, cpu_period=100000,
                                         cpu_shares=512)
    container_id = kubelet.run(pod_id, pod, "app", SLEEP, limits)
    scope = f"crisp-{container_id}.scope"
    path = f"/crisp.slice/{pod_slice}/{scope}"
    pid = kubelet.pid(container_id)
    assert cgroup_of(pid) == path
    status = systemctl("status", scope)
    assert "Active: active (running)" in status and f"CGroup: {path}" in status and f"{pid} " in status, status
    props = unit_properties(scope, "Slice", "Delegate", "MemoryMax", "CPUQuotaPerSecUSec", "ControlGroup")
    assert props == {"Slice": pod_slice, "Delegate": "yes", "MemoryMax": str(64 * MiB),
                     "CPUQuotaPerSecUSec": "500ms", "ControlGroup": path}
    # the files carry the same limits (written by crispd after the unit started)
    assert (CGROUP / path.lstrip("/") / "memory.max").read_text().strip() == str(64 * MiB)
    assert (CGROUP / path.lstrip("/") / "cpu.max").read_text().strip() == "50000 100000"
    # the shim lives in a scope of its own, outside crispd.service
    shim = shim_pid(container_id)
    assert cgroup_of(shim) == f"/system.slice/crisp-shim-{container_id}.scope"
    assert unit_properties(f"crisp-shim-{container_id}.scope", "ActiveState")["ActiveState"] == "active"


def test_kubelet_slices_from_cgroup_root(kubelet: Kubelet) -> None:
    """kind's kubelet (cgroupDriver systemd, cgroupRoot /kubelet) names pod slices `kubelet-kubepods-...`: expanded
    with the dash rule, the container's scope lands inside."""
    parent = f"kubelet-kubepods-besteffort-pod{secrets.token_hex(4)}.slice"
    pod_id, pod = kubelet.pod("kubelet-style", cgroup_parent=parent)
    container_id = kubelet.run(pod_id, pod, "app", SLEEP)
    expected = (f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/{parent}/"
                f"crisp-{container_id}.scope")
    assert cgroup_of(kubelet.pid(container_id)) == expected
    assert unit_properties(f"crisp-{container_id}.scope", "Slice")["Slice"] == parent


def test_limits_are_enforced_and_updates_reach_systemd(kubelet: Kubelet) -> None:
    pod_id, pod = kubelet.pod("limited")
    hungry = kubelet.run(pod_id, pod, "hungry", allocate_and_hold(48),
                         cri.LinuxContainerResources(memory_limit_in_bytes=16 * MiB))
    killed = kubelet.wait_exited(hungry)
    assert (killed.exit_code, killed.reason) == (137, "OOMKilled"), killed

    holder = kubelet.run(pod_id, pod, "holder", ["sh", "-c", HOLD],
                         cri.LinuxContainerResources(memory_limit_in_bytes=64 * MiB))
    scope = f"crisp-{holder}.scope"
    bigger = cri.LinuxContainerResources(memory_limit_in_bytes=96 * MiB)
    kubelet.rt.UpdateContainerResources(cri.UpdateContainerResourcesRequest(container_id=holder, linux=bigger),
                                        timeout=60)
    assert unit_properties(scope, "MemoryMax")["MemoryMax"] == str(96 * MiB)
    path = CGROUP / cgroup_of(kubelet.pid(holder)).lstrip("/")
    assert (path / "memory.max").read_text().strip() == str(96 * MiB)
    systemctl("daemon-reload")  # systemd re-applies what it knows: the properties, which crispd kept current
    assert (path / "memory.max").read_text().strip() == str(96 * MiB)


def test_restarting_crispd_keeps_every_container(kubelet: Kubelet) -> None:
    """`systemctl restart crispd` (here also to take a runc handler from the config): the containers, their shims
    and their scopes stay as they are, and the new crispd knows them; runc makes its own scope (--systemd-cgroup)."""
    pod_id, pod = kubelet.pod("steady")
    builtin = kubelet.run(pod_id, pod, "app", SLEEP)
    before = (kubelet.pid(builtin), shim_pid(builtin), unit_properties("crispd.service", "MainPID")["MainPID"])
    config = Path("/etc/crisp/crisp.toml")
    original = config.read_text()
    config.write_text(original + '\n[runtime.handlers.runc]\npath = "runc"\n')
    try:
        systemctl("restart", "crispd.service")
        main_pid = unit_properties("crispd.service", "MainPID")["MainPID"]
        assert main_pid != before[2]
        assert (kubelet.pid(builtin), shim_pid(builtin)) == before[:2]
        assert kubelet.status(builtin).state == cri.CONTAINER_RUNNING
        assert Path(f"/proc/{before[0]}").exists() and Path(f"/proc/{before[1]}").exists()
        assert unit_properties(f"crisp-{builtin}.scope", "ActiveState")["ActiveState"] == "active"

        runc_pod, runc_config = kubelet.pod("runc", handler="runc")
        runc_container = kubelet.run(runc_pod, runc_config, "app", SLEEP,
                                     cri.LinuxContainerResources(memory_limit_in_bytes=32 * MiB))
        runc_slice = f"crisp-pod{runc_config.metadata.uid.replace('-', '_')}.slice"
        assert cgroup_of(kubelet.pid(runc_container)) == f"/crisp.slice/{runc_slice}/crisp-{runc_container}.scope"
        assert unit_properties(f"crisp-{runc_container}.scope", "MemoryMax")["MemoryMax"] == str(32 * MiB)
    finally:
        kubelet.remove_all()
        config.write_text(original)
        systemctl("restart", "crispd.service")


def test_no_crisp_unit_is_left_once_the_pods_are_gone(kubelet: Kubelet) -> None:
    pod_id, pod = kubelet.pod("short")
    container_id = kubelet.run(pod_id, pod, "app", SLEEP)
    assert f"crisp-{container_id}.scope" in crisp_units()
    kubelet.remove_all()
    deadline = time.monotonic() + 30
    while crisp_units() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert crisp_units() == []
