"""crispd under the pure cgroup v2 kernel, driven over its socket as the kubelet drives it: CRI resources become the
files of the container and pod cgroups, UpdateContainerResources and UpdatePodSandboxResources change them live
(and the kernel enforces the new values: forks refused then allowed, a process OOM-killed when memory is lowered
below its use), and an OOM kill is reported by ContainerStatus as EXITED, 137, "OOMKilled".

The guest has no network: a Debian docker-registry on a free 127.0.0.1 port serves busybox-static as an image.
One crispd and one registry serve the whole module (every Python start costs ~0.7 s under TCG); every test removes
its pods and checks that nothing is left. Slow callbacks are not checked here (see test_crispd.py)."""

from __future__ import annotations

import os
import secrets
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cri import api as cri
from tests.cri.pods import Pods
from tests.cri.test_doctor import doctor, tmpfs_idmap_kernel
from tests.vm.guest.cri_steps import container_status, pod_config, run_container, served_crispd, wait_exited
from tests.vm.guest.support import HOLD, Cgroup, allocate_and_hold, unique_name, wait_until

MiB = 1 << 20
# started as programs of the image (every busybox applet is a /bin entry there)
SLEEP = ["sleep", "100000"]
# a shell that starts 12 background processes, one line per fork that worked; ash gives up ("can't fork") at the
# first fork pids.max refuses. Their stdio is /dev/null, so that none holds the exec's pipes.
FORK_12 = ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 3 </dev/null >/dev/null 2>&1 & echo $i; done; "
           "wait"]
# CRI cpu shares -> cgroup v2 cpu.weight, by the log-quadratic mapping (runc >= 1.3.2, crun >= 1.23, the kubelet):
# with l = log2(shares), weight = ceil(10 ** ((l*l + 125*l) / 612 - 7/34)); worked out by hand, not by crisp
WEIGHT_OF_SHARES = {512: 59, 1024: 100, 2048: 174}
LIMIT_FILES = ("memory.max", "memory.swap.max", "cpu.max", "cpu.weight", "pids.max", "cpuset.cpus")
# what the pod cgroup crisp makes inherits from no CRI value
UNLIMITED = {"memory.max": "max", "memory.swap.max": "max", "cpu.max": "max 100000", "cpu.weight": "100",
             "pids.max": "max"}


@dataclass
class Node:
    """The module's crispd (with its own cgroup base), the image it pulled, and the cgroup2 mount."""

    pods: Pods
    image: str
    cgroup_root: Path
    base: Path  # where the test keeps pod log directories


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, cgroup_root: Path) -> Iterator[Node]:
    base = tmp_path_factory.mktemp("crispd-limits")
    with served_crispd(base) as (pods, image):
        yield Node(pods, image, cgroup_root, base)


@dataclass
class Kubelet:
    """What the kubelet does for one test, in a few calls; `cleanup` removes every pod (and every cgroup of its
    own) it made and says what was left."""

    node: Node
    pods_made: list[str] = field(default_factory=list)
    cgroups_made: list[Cgroup] = field(default_factory=list)

    @property
    def rt(self) -> cri.RuntimeServiceStub:
        return self.node.pods.daemon.runtime

    def pod_cgroup(self) -> str:
        """A pod cgroup as the kubelet makes one (`/kubepods/burstable/pod<uid>`), with the controllers enabled
        in its parent: crisp gets it as `cgroup_parent`, makes nothing of it, and may not size it."""
        kubepods = Cgroup(self.node.cgroup_root / unique_name("crisp-vmkube"))
        kubepods.path.mkdir()
        self.cgroups_made.append(kubepods)
        kubepods.enable("cpu", "cpuset", "memory", "pids")
        pod = kubepods.child(f"pod{secrets.token_hex(4)}")
        return "/" + str(pod.path.relative_to(self.node.cgroup_root))

    def pod(self, name: str, cgroup_parent: str = "") -> tuple[str, cri.PodSandboxConfig]:
        config = pod_config(name, "limits", f"uid-{secrets.token_hex(4)}", self.node.base / "logs", cgroup_parent)
        pod_id = self.node.pods.run(config)
        self.pods_made.append(pod_id)
        return pod_id, config

    def crisp_pod_cgroup(self, config: cri.PodSandboxConfig) -> Path:
        """The pod cgroup crisp makes when the kubelet gives no cgroup_parent: `<cgroup.base>/pod<uid>`."""
        return self.node.cgroup_root / self.node.pods.cgroup_base.lstrip("/") / f"pod{config.metadata.uid}"

    def run(self, pod_id: str, pod: cri.PodSandboxConfig, name: str, command: list[str],
            resources: cri.LinuxContainerResources | None = None) -> str:
        return run_container(self.rt, self.node.image, pod_id, pod, name, command, resources)

    def status(self, container_id: str) -> cri.ContainerStatus:
        return container_status(self.rt, container_id)

    def wait_exited(self, container_id: str) -> cri.ContainerStatus:
        return wait_exited(self.rt, container_id)

    def log(self, pod: cri.PodSandboxConfig, name: str) -> str:
        path = Path(pod.log_directory) / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_logged(self, pod: cri.PodSandboxConfig, name: str, text: str) -> None:
        wait_until(lambda: text in self.log(pod, name), 120, f"{text!r} in the log of {name}", interval=0.2)

    def update(self, container_id: str, resources: cri.LinuxContainerResources) -> None:
        self.rt.UpdateContainerResources(cri.UpdateContainerResourcesRequest(
            container_id=container_id, linux=resources), timeout=60)

    def update_pod(self, pod_id: str, resources: cri.LinuxContainerResources) -> None:
        self.rt.UpdatePodSandboxResources(cri.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=pod_id, resources=resources), timeout=60)

    def exec(self, container_id: str, command: list[str]) -> cri.ExecSyncResponse:
        response: cri.ExecSyncResponse = self.rt.ExecSync(
            cri.ExecSyncRequest(container_id=container_id, cmd=command, timeout=60), timeout=120)
        return response

    def cleanup(self) -> list[str]:
        left = []
        for pod_id in self.pods_made:
            self.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
        daemon = self.node.pods.daemon
        for kept in (daemon.state / "containers", daemon.root / "containers"):
            if kept.exists():
                left += [f"container dir {d}" for d in kept.iterdir()]
        # crisp removes the container cgroups it made inside the kubelet's pod cgroup, and only those
        for kubepods in self.cgroups_made:
            for pod in (p for p in kubepods.path.iterdir() if p.is_dir()):
                left += [f"cgroup {c}" for c in pod.iterdir() if c.is_dir()]
        left += self.node.pods.leaks()
        return left


@pytest.fixture
def kubelet(node: Node) -> Iterator[Kubelet]:
    made = Kubelet(node)
    try:
        yield made
    finally:
        try:
            left = made.cleanup()
        finally:
            for cgroup in reversed(made.cgroups_made):
                cgroup.remove()
    assert left == []


def limits(cgroup: Path, *names: str) -> dict[str, str]:
    return {name: (cgroup / name).read_text().strip() for name in names or LIMIT_FILES}


def test_container_cgroup_holds_the_cri_limits_and_updates_change_them_live(kubelet: Kubelet) -> None:
    parent = kubelet.pod_cgroup()
    pod_id, pod = kubelet.pod("sized", cgroup_parent=parent)
    first = cri.LinuxContainerResources(cpu_shares=512, cpu_quota=20000, cpu_period=100000,
                                        memory_limit_in_bytes=64 * MiB, cpuset_cpus="0", unified={"pids.max": "6"})
    container_id = kubelet.run(pod_id, pod, "app", SLEEP, first)
    cgroup = kubelet.node.cgroup_root / parent.lstrip("/") / f"crisp-{container_id}"
    assert limits(cgroup) == {"memory.max": str(64 * MiB), "memory.swap.max": "0", "cpu.max": "20000 100000",
                              "cpu.weight": str(WEIGHT_OF_SHARES[512]), "pids.max": "6", "cpuset.cpus": "0"}
    assert kubelet.status(container_id).resources.linux == first

    # the kernel holds the container to pids.max 6: sleep, the exec's shell (and its launcher) leave room for 4 more
    refused = kubelet.exec(container_id, FORK_12)
    assert refused.exit_code != 0, refused
    assert b"can't fork" in refused.stderr, refused
    assert len(refused.stdout.split()) <= 4, refused

    cpus = "0-1" if len(os.sched_getaffinity(0)) > 1 else "0"
    second = cri.LinuxContainerResources(cpu_shares=2048, cpu_quota=50000, cpu_period=50000,
                                         memory_limit_in_bytes=128 * MiB, cpuset_cpus=cpus, unified={"pids.max": "64"})
    kubelet.update(container_id, second)
    assert limits(cgroup) == {"memory.max": str(128 * MiB), "memory.swap.max": "0", "cpu.max": "50000 50000",
                              "cpu.weight": str(WEIGHT_OF_SHARES[2048]), "pids.max": "64", "cpuset.cpus": cpus}
    status = kubelet.status(container_id)
    assert status.state == cri.CONTAINER_RUNNING
    assert status.resources.linux == second

    allowed = kubelet.exec(container_id, FORK_12)
    assert (allowed.exit_code, allowed.stdout.split(), allowed.stderr) == (0, [str(i).encode() for i in range(1, 13)],
                                                                           b""), allowed


def test_pod_update_leaves_the_kubelets_pod_cgroup_to_the_kubelet(kubelet: Kubelet) -> None:
    parent = kubelet.pod_cgroup()
    pod_id, _ = kubelet.pod("kubelet-sized", cgroup_parent=parent)
    pod_cgroup = kubelet.node.cgroup_root / parent.lstrip("/")
    before = limits(pod_cgroup, *UNLIMITED)
    with pytest.raises(grpc.RpcError) as refused:
        kubelet.update_pod(pod_id, cri.LinuxContainerResources(memory_limit_in_bytes=64 * MiB))
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert parent in (refused.value.details() or "")
    assert limits(pod_cgroup, *UNLIMITED) == before


def test_lowering_memory_below_use_oom_kills_the_container_and_says_so(kubelet: Kubelet) -> None:
    parent = kubelet.pod_cgroup()
    pod_id, pod = kubelet.pod("shrunk", cgroup_parent=parent)
    container_id = kubelet.run(pod_id, pod, "holder", allocate_and_hold(16, then=HOLD),
                               cri.LinuxContainerResources(memory_limit_in_bytes=96 * MiB))
    kubelet.wait_logged(pod, "holder", "holding")
    cgroup = kubelet.node.cgroup_root / parent.lstrip("/") / f"crisp-{container_id}"
    assert int((cgroup / "memory.current").read_text()) > 16 * MiB
    assert kubelet.status(container_id).state == cri.CONTAINER_RUNNING

    # below what the shell holds, with no swap: the kernel reclaims what it can, then OOM-kills the holder
    smaller = cri.LinuxContainerResources(memory_limit_in_bytes=8 * MiB)
    kubelet.update(container_id, smaller)
    status = kubelet.wait_exited(container_id)
    assert (status.exit_code, status.reason) == (137, "OOMKilled"), status
    assert status.resources.linux == smaller


def test_container_over_its_memory_limit_is_reported_oom_killed(kubelet: Kubelet) -> None:
    pod_id, pod = kubelet.pod("limited")
    hungry = kubelet.run(pod_id, pod, "hungry", allocate_and_hold(48),
                         cri.LinuxContainerResources(memory_limit_in_bytes=16 * MiB))
    modest = kubelet.run(pod_id, pod, "modest", allocate_and_hold(1),
                         cri.LinuxContainerResources(memory_limit_in_bytes=64 * MiB))
    killed = kubelet.wait_exited(hungry)
    assert (killed.exit_code, killed.reason) == (137, "OOMKilled"), killed
    assert "survived" not in kubelet.log(pod, "hungry")
    done = kubelet.wait_exited(modest)
    assert (done.exit_code, done.reason) == (0, "Completed"), done
    assert "survived" in kubelet.log(pod, "modest")


def test_pod_sandbox_resources_change_the_pod_cgroup_crisp_made_live(kubelet: Kubelet) -> None:
    pod_id, pod = kubelet.pod("grown")
    pod_cgroup = kubelet.crisp_pod_cgroup(pod)
    assert limits(pod_cgroup, *UNLIMITED) == UNLIMITED

    sized = cri.LinuxContainerResources(cpu_shares=1024, cpu_quota=150000, cpu_period=100000,
                                        memory_limit_in_bytes=96 * MiB, unified={"pids.max": "32"})
    kubelet.update_pod(pod_id, sized)
    assert limits(pod_cgroup, *UNLIMITED) == {
        "memory.max": str(96 * MiB), "memory.swap.max": "0", "cpu.max": "150000 100000",
        "cpu.weight": str(WEIGHT_OF_SHARES[1024]), "pids.max": "32"}

    # a container without limits of its own lives within the pod's: lowering the pod's memory below what it
    # holds OOM-kills it, and that is reported as such
    container_id = kubelet.run(pod_id, pod, "holder", allocate_and_hold(16, then=HOLD))
    kubelet.wait_logged(pod, "holder", "holding")
    container_cgroup = pod_cgroup / f"crisp-{container_id}"
    assert limits(container_cgroup, "memory.max", "pids.max") == {"memory.max": "max", "pids.max": "max"}
    kubelet.update_pod(pod_id, cri.LinuxContainerResources(memory_limit_in_bytes=8 * MiB))
    assert limits(pod_cgroup, "memory.max") == {"memory.max": str(8 * MiB)}
    status = kubelet.wait_exited(container_id)
    assert (status.exit_code, status.reason) == (137, "OOMKilled"), status


def test_memory_and_oom_series_on_crispds_metrics_page(kubelet: Kubelet) -> None:
    """With the memory controller, crispd's own /metrics has the cAdvisor memory series of containers and of the
    pod cgroup, the container's limit, the pod's OOM events, and crisp's OOM kills by pod and container."""
    pod_id, pod = kubelet.pod("watched")
    kubelet.run(pod_id, pod, "holder", allocate_and_hold(16, HOLD),  # filling peaks at twice that
                cri.LinuxContainerResources(memory_limit_in_bytes=64 * MiB))
    kubelet.wait_logged(pod, "holder", "holding")
    hungry = kubelet.run(pod_id, pod, "hungry", allocate_and_hold(48),
                         cri.LinuxContainerResources(memory_limit_in_bytes=16 * MiB))
    assert kubelet.wait_exited(hungry).reason == "OOMKilled"
    text = urllib.request.urlopen(kubelet.node.pods.daemon.metrics_url(), timeout=120).read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        found = [v for (n, keys), v in samples.items() if n == name and labels.items() <= dict(keys).items()]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    holder = {"namespace": "limits", "pod": "watched", "container": "holder"}
    assert value("container_memory_working_set_bytes", **holder) >= 15 * MiB
    assert value("container_spec_memory_limit_bytes", **holder) == 64 * MiB
    pod_cgroup = {"namespace": "limits", "pod": "watched", "container": "", "id": pod_id}
    assert value("container_memory_working_set_bytes", **pod_cgroup) >= value("container_memory_working_set_bytes",
                                                                              **holder)
    assert value("container_oom_events_total", **pod_cgroup) >= 1
    assert value("container_oom_events_total", **holder) == 0
    assert value("crisp_container_oom_kills_total", namespace="limits", pod="watched", container="hungry") == 1


def test_doctor_finds_nothing_wrong_under_pure_cgroup_v2(node: Node) -> None:
    """Every controller, a running crispd: `crispd doctor` passes every check (the disk of a small guest aside, and
    tmpfs id-mapping on a kernel before 6.3, bookworm's 6.1; there user namespaces too, when crispd's dirs are on a
    tmpfs, as this module's are in the guest's /tmp). Checkpoints work here: criu check passes on 6.1."""
    code, checks = doctor(node.pods.daemon)
    verdict = {name: v for name, (v, _) in checks.items()}
    expected = {name: "ok" for name in verdict if not name.startswith("disk")}
    if not tmpfs_idmap_kernel():
        expected["tmpfs id-mapping"] = "warn"
        fstype = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(node.pods.daemon.state)],
                                capture_output=True, text=True, check=True).stdout.strip()
        if fstype == "tmpfs":
            expected["user namespaces"] = "warn"
            assert "tmpfs from Linux 6.3" in checks["user namespaces"][1], checks["user namespaces"]
    assert {name: v for name, v in verdict.items() if not name.startswith("disk")} == expected, checks
    assert code == (0 if set(verdict.values()) == {"ok"} else 2)
    assert checks["cgroup controllers"][1] == "pods get cpu, cpuset, memory, pids, io, hugetlb"
