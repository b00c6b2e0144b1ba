"""What crisp reports is what is in force: limits dropped for a missing cgroup controller are not shown as applied
(ContainerStatus, crictl inspect) and are named in the verbose info; stats without memory accounting leave memory
out (crictl stats -o json), and crictl info says so once. Checked on a host whose pods lack the memory controller
(this host's hybrid cgroup v2); the VM tier has every controller (tests/vm/guest/test_crispd_limits.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from cri import api as cri
from cri.doctor.cgroups import pod_controllers
from runtime.cgroups import CgroupV2Manager
from tests.cri.pods import Pods, running_pods
from tests.cri.test_containers import Kubelet

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.cri.conftest import TestImages

pytestmark = pytest.mark.root

LIMITS = cri.LinuxContainerResources(memory_limit_in_bytes=64 << 20, unified={"cgroup.max.descendants": "13"})


def without_memory(pods: Pods) -> None:
    if "memory" in pod_controllers(CgroupV2Manager.discover(), pods.cgroup_base):
        pytest.skip("this host gives pods the memory controller (the VM tier checks that side)")


@pytest.fixture
def warn(tmp_path: Path, test_images: TestImages) -> Iterator[Kubelet]:
    with running_pods(tmp_path, cgroup_config='missing_controller = "warn"\n') as pods:
        yield Kubelet(pods, test_images, tmp_path / "logs")


def verbose_info(kubelet: Kubelet, container_id: str) -> dict[str, object]:
    response = kubelet.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id, verbose=True))
    info: dict[str, object] = json.loads(response.info["info"])
    return info


def test_a_dropped_limit_is_not_reported_as_in_force(warn: Kubelet) -> None:
    without_memory(warn.pods)
    pod_id, pod = warn.pod()
    container_id = warn.run(pod_id, pod, "app", ["sleep", "1000"], linux=cri.LinuxContainerConfig(resources=LIMITS))
    status = warn.status(container_id)
    # the memory limit (and the "no swap" that came with it) is not in force; the limit that is, is shown
    assert not status.resources.linux.memory_limit_in_bytes
    assert not status.resources.linux.memory_swap_limit_in_bytes
    assert dict(status.resources.linux.unified) == {"cgroup.max.descendants": "13"}
    dropped = verbose_info(warn, container_id)["droppedLimits"]
    assert isinstance(dropped, dict)
    assert dropped["limits"] == ["memory.limit (needs memory)"]  # no swap: none was asked for
    assert 'missing_controller = "warn"' in dropped["reason"]
    # what an operator sees with crictl
    inspect = json.loads(warn.pods.daemon.crictl("inspect", container_id).stdout)
    shown = inspect["status"]["resources"]["linux"]  # crictl prints unset fields as 0
    assert (shown["memoryLimitInBytes"], shown["memorySwapLimitInBytes"]) == ("0", "0")
    assert shown["unified"] == {"cgroup.max.descendants": "13"}
    assert inspect["info"]["droppedLimits"]["limits"] == ["memory.limit (needs memory)"]

    # an update that asks for a memory limit again: the same
    warn.rt.UpdateContainerResources(cri.UpdateContainerResourcesRequest(
        container_id=container_id, linux=cri.LinuxContainerResources(memory_limit_in_bytes=32 << 20)))
    assert not warn.status(container_id).resources.linux.memory_limit_in_bytes
    assert verbose_info(warn, container_id)["droppedLimits"]["limits"] == [  # type: ignore[index]
        "memory.limit (needs memory)"]
    # and one that asks for nothing this node lacks: nothing is dropped any more
    warn.rt.UpdateContainerResources(cri.UpdateContainerResourcesRequest(
        container_id=container_id, linux=cri.LinuxContainerResources(unified={"cgroup.max.descendants": "7"})))
    assert "droppedLimits" not in verbose_info(warn, container_id)
    assert dict(warn.status(container_id).resources.linux.unified) == {"cgroup.max.descendants": "7"}


def test_the_refusal_names_only_the_limits_asked_for(pods: Pods, test_images: TestImages, tmp_path: Path) -> None:
    without_memory(pods)
    kubelet = Kubelet(pods, test_images, tmp_path / "logs")
    pod_id, pod = kubelet.pod()
    with pytest.raises(grpc.RpcError) as err:
        kubelet.create(pod_id, pod, "limited", ["sleep", "1"], linux=cri.LinuxContainerConfig(
            resources=cri.LinuxContainerResources(memory_limit_in_bytes=64 << 20)))
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    details = err.value.details() or ""
    assert "memory.limit (needs memory)" in details and "swap" not in details
    with pytest.raises(grpc.RpcError) as err:
        kubelet.create(pod_id, pod, "swapping", ["sleep", "1"], linux=cri.LinuxContainerConfig(
            resources=cri.LinuxContainerResources(memory_limit_in_bytes=64 << 20,
                                                  memory_swap_limit_in_bytes=128 << 20)))
    assert "memory.swap (needs memory)" in (err.value.details() or "")


def test_stats_leave_memory_out_without_memory_accounting(warn: Kubelet) -> None:
    without_memory(warn.pods)
    pod_id, pod = warn.pod()
    container_id = warn.run(pod_id, pod, "app", ["sleep", "1000"])
    stats = warn.rt.ContainerStats(cri.ContainerStatsRequest(container_id=container_id)).stats
    assert stats.cpu.HasField("usage_core_nano_seconds")
    assert not stats.HasField("memory") and not stats.HasField("swap")
    pod_stats = warn.rt.PodSandboxStats(cri.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats
    assert not pod_stats.linux.HasField("memory")
    listed = json.loads(warn.pods.daemon.crictl("stats", "-o", "json").stdout)
    (entry,) = listed["stats"]
    assert "cpu" in entry and "memory" not in entry and "swap" not in entry
    # crictl info says it once, for the node
    info = json.loads(warn.pods.daemon.crictl("info").stdout)
    notes = info["cgroup"]["notes"]
    assert "memory" not in info["cgroup"]["podControllers"] and info["cgroup"]["missingController"] == "warn"
    memory_notes = [n for n in notes if n.startswith("no memory controller")]
    assert len(memory_notes) == 1
    assert "dropped with a warning" in memory_notes[0] and "left out of the stats" in memory_notes[0]
