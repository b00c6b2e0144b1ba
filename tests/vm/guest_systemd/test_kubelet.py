"""The pinned kubelet on the systemd node, configured as kind configures it (cgroupDriver systemd, cgroupRoot /kubelet,
failSwapOn false, image GC and disk eviction off), standalone with one static pod: it takes its driver from crisp's
RuntimeConfig, pulls the image through crisp, makes the pod's slice under kubelet.slice, and crisp puts the
container's scope into it with the pod's limits. The kubelet comes from the Go tools the host shares at /mnt/tools
(scripts/build-k8s-tools); without them the test is skipped."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri import api as cri
from tests.vm.guest_systemd.conftest import SOCKET, Node, systemctl, unit_properties

KUBELET = Path("/mnt/tools/kubelet")
UNIT = "crisp-test-kubelet.service"
MANIFESTS = Path("/etc/kubernetes/manifests")
MiB = 1 << 20
# everything under TCG is slow: the kubelet starts, syncs and pulls in minutes, not seconds
STARTUP_TIMEOUT = 420.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubelet_config(read_only_port: int, port: int) -> str:
    return json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        # kind's values
        "cgroupDriver": "systemd", "cgroupRoot": "/kubelet", "failSwapOn": False,
        "imageGCHighThresholdPercent": 100,
        "evictionHard": {"nodefs.available": "0%", "nodefs.inodesFree": "0%", "imagefs.available": "0%"},
        # standalone: static pods only, no API server to ask about auth
        "containerRuntimeEndpoint": f"unix://{SOCKET}", "staticPodPath": str(MANIFESTS), "fileCheckFrequency": "5s",
        "address": "127.0.0.1", "port": port, "readOnlyPort": read_only_port,
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
    })


def static_pod(image: str) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"hostNetwork": True, "containers": [{
            "name": "app", "image": image, "command": ["sleep", "100000"],
            "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}}]},
    })


@pytest.fixture
def kubelet(node: Node, tmp_path: Path) -> Iterator[int]:
    if not KUBELET.is_file():
        pytest.skip("the kubelet is not built on the host (scripts/build-k8s-tools)")
    read_only_port, port = free_port(), free_port()
    config = tmp_path / "kubelet.json"
    config.write_text(kubelet_config(read_only_port, port))
    MANIFESTS.mkdir(parents=True, exist_ok=True)
    (MANIFESTS / "web.json").write_text(static_pod(node.image))
    # as kind runs it: a service in kubelet.slice (its cgroupRoot /kubelet is that slice), crispd as its runtime
    subprocess.run(["systemd-run", f"--unit={UNIT}", "--slice=kubelet.slice", "--property=KillMode=process",
                    str(KUBELET), f"--config={config}", "--hostname-override=crisp-vm",
                    "--runtime-cgroups=/system.slice/crispd.service"], check=True, capture_output=True)
    try:
        yield read_only_port
    finally:
        for unit, lines in ((UNIT, "80"), ("crispd.service", "150")):  # shown when the test failed
            journal = subprocess.run(["journalctl", "-u", unit, "--no-pager", "-n", lines], capture_output=True,
                                     text=True)
            print(f"{unit}, the last {lines} lines:\n{journal.stdout}")
        (MANIFESTS / "web.json").unlink(missing_ok=True)
        systemctl("stop", UNIT, check=False)
        systemctl("reset-failed", UNIT, check=False)
        for sandbox in node.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items:
            node.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=120)
            node.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=120)


def running_app(node: Node) -> cri.Container | None:
    for container in node.runtime.ListContainers(cri.ListContainersRequest()).containers:
        if (container.labels.get("io.kubernetes.container.name") == "app"
                and container.state == cri.CONTAINER_RUNNING):
            found: cri.Container = container
            return found
    return None


def test_kubelet_with_kinds_values_runs_a_static_pod(node: Node, kubelet: int) -> None:
    # longer than the guest's bound on one test phase (CRISP_VM_TEST_TIMEOUT): the kubelet under TCG is slow
    signal.setitimer(signal.ITIMER_REAL, STARTUP_TIMEOUT + 180)
    started = time.monotonic()
    app = None
    while app is None and time.monotonic() - started < STARTUP_TIMEOUT:
        state = unit_properties(UNIT, "ActiveState")["ActiveState"]
        assert state in ("active", "activating"), systemctl("status", UNIT, check=False)
        app = running_app(node)
        if app is None:
            time.sleep(2)
    assert app is not None, "the static pod's container is not running: " + subprocess.run(
        ["journalctl", "-u", UNIT, "--no-pager", "-n", "40"], capture_output=True, text=True).stdout
    print(f"static pod running {time.monotonic() - started:.0f}s after the kubelet started")
    sandbox = node.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=app.pod_sandbox_id)).status
    assert sandbox.metadata.name == "web-crisp-vm"  # a static pod is named after its node
    uid = sandbox.metadata.uid.replace("-", "_")
    pod_slice = f"kubelet-kubepods-burstable-pod{uid}.slice"
    scope = f"crisp-{app.id}.scope"
    props = unit_properties(scope, "Slice", "ControlGroup", "MemoryMax", "ActiveState")
    assert props == {
        "Slice": pod_slice, "ActiveState": "active", "MemoryMax": str(64 * MiB),
        "ControlGroup": f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/{pod_slice}/{scope}"}
    # the kubelet's own view (its read-only port): the container it runs is crisp's
    deadline = time.monotonic() + 120
    statuses: list[dict[str, object]] = []
    while not statuses and time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{kubelet}/pods", timeout=30) as response:
            pods = json.load(response)["items"]
        statuses = [s for p in pods if p["metadata"]["name"] == "web-crisp-vm"
                    for s in p.get("status", {}).get("containerStatuses", []) if "running" in s.get("state", {})]
        time.sleep(1)
    assert statuses and statuses[0]["containerID"] == f"crisp://{app.id}", statuses
