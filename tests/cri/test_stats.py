"""The CRI stats and metrics RPCs against a real crispd: a busy container's numbers rise and agree with its cgroup
files; what this host's cgroups lack stays unset; the writable layer grows; the pod's network counters move."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cri import api as cri
from cri.stats import MIN_RATE_NS
from runtime.cgroups import CgroupV2Manager
from runtime.cgroups.fs import read_flat_keyed
from tests.cri.pods import running_pods
from tests.cri.test_containers import Kubelet
from tests.leaks import wait_until

if TYPE_CHECKING:
    from tests.cri.conftest import TestImages

pytestmark = pytest.mark.root

BURNER = ["sh", "-c", "while :; do :; done"]


@pytest.fixture
def kubelet(tmp_path: Path, test_images: TestImages) -> Iterator[Kubelet]:
    # no caching of the writable layer's walk: the test sees a write at once
    with running_pods(tmp_path, "[stats]\ndisk_usage_cache_seconds = 0.0\n") as pods:
        yield Kubelet(pods, test_images, tmp_path / "logs")


def cgroup_dir(kubelet: Kubelet, container_id: str) -> Path:
    response = kubelet.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id, verbose=True))
    return CgroupV2Manager.discover().mount / json.loads(response.info["info"])["cgroup"].lstrip("/")


def pod_cgroup_dir(kubelet: Kubelet, pod_id: str) -> Path:
    response = kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
    return CgroupV2Manager.discover().mount / json.loads(response.info["info"])["cgroup"].lstrip("/")


def usage_ns(directory: Path) -> int:
    keys = read_flat_keyed(directory / "cpu.stat")
    assert keys is not None
    return keys["usage_usec"] * 1000


def stats(kubelet: Kubelet, container_id: str) -> cri.ContainerStats:
    return kubelet.rt.ContainerStats(cri.ContainerStatsRequest(container_id=container_id)).stats


def test_busy_container_stats_rise_and_agree_with_the_cgroup(kubelet: Kubelet) -> None:
    pod_id, pod = kubelet.pod("busy")
    busy = kubelet.run(pod_id, pod, "burner", BURNER)
    idle = kubelet.run(pod_id, pod, "idle", ["sleep", "1000"])
    directory = cgroup_dir(kubelet, busy)

    before = usage_ns(directory)
    first = stats(kubelet, busy)
    after = usage_ns(directory)
    assert first.attributes.id == busy and first.attributes.metadata.name == "burner"
    assert first.attributes.labels["c"] == "burner"
    assert first.cpu.timestamp > 0
    # memory is there with its timestamp where the cgroup accounts for it, and left out (not 0) where not
    assert first.HasField("memory") == (directory / "memory.current").exists()
    assert before <= first.cpu.usage_core_nano_seconds.value <= after
    # a second sample later (past the shortest window a rate is taken over): the core-seconds rose, and the
    # rate between the two samples is there
    time.sleep(MIN_RATE_NS / 1e9 * 2)
    assert wait_until(lambda: usage_ns(directory) > after + 50_000_000, 30)
    second = stats(kubelet, busy)
    assert second.cpu.usage_core_nano_seconds.value > first.cpu.usage_core_nano_seconds.value
    assert second.cpu.timestamp > first.cpu.timestamp
    assert second.cpu.HasField("usage_nano_cores") and second.cpu.usage_nano_cores.value > 0

    # what this kernel reports is set and agrees with the files; what it lacks is unset, not 0
    memory_file = directory / "memory.current"
    memory = second.memory
    if memory_file.exists():
        assert memory.timestamp > 0 and memory.HasField("usage_bytes") and memory.HasField("working_set_bytes")
    else:
        assert not second.HasField("memory") and not second.HasField("swap")
    if (directory / "cpu.pressure").exists():
        some = read_flat_keyed_psi(directory / "cpu.pressure")
        assert second.cpu.HasField("psi")
        assert second.cpu.psi.Some.Total <= some * 1000 + 10**9
    else:
        assert not second.cpu.HasField("psi")
    assert not second.swap.HasField("swap_usage_bytes") or (directory / "memory.swap.current").exists()

    # listing with filters
    def listed(flt: cri.ContainerStatsFilter) -> list[str]:
        response = kubelet.rt.ListContainerStats(cri.ListContainerStatsRequest(filter=flt))
        return sorted(s.attributes.id for s in response.stats)

    assert listed(cri.ContainerStatsFilter()) == sorted([busy, idle])
    assert listed(cri.ContainerStatsFilter(id=busy)) == [busy]
    assert listed(cri.ContainerStatsFilter(id=busy[:12])) == [busy]
    assert listed(cri.ContainerStatsFilter(pod_sandbox_id=pod_id)) == sorted([busy, idle])
    assert listed(cri.ContainerStatsFilter(pod_sandbox_id="nosuchpod")) == []
    assert listed(cri.ContainerStatsFilter(label_selector={"c": "idle"})) == [idle]
    assert listed(cri.ContainerStatsFilter(label_selector={"c": "idle", "x": "y"})) == []

    # the pod: its cgroup holds both containers' time, and their processes
    pod_dir = pod_cgroup_dir(kubelet, pod_id)
    before = usage_ns(pod_dir)
    pod_stats = kubelet.rt.PodSandboxStats(cri.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats
    assert pod_stats.attributes.id == pod_id and pod_stats.attributes.metadata.name == "busy"
    linux = pod_stats.linux
    assert before <= linux.cpu.usage_core_nano_seconds.value <= usage_ns(pod_dir)
    assert linux.cpu.usage_core_nano_seconds.value >= second.cpu.usage_core_nano_seconds.value
    assert linux.process.timestamp > 0 and linux.process.process_count.value >= 2
    assert sorted(c.attributes.id for c in linux.containers) == sorted([busy, idle])
    listed_pods = kubelet.rt.ListPodSandboxStats(cri.ListPodSandboxStatsRequest()).stats
    assert [p.attributes.id for p in listed_pods] == [pod_id]
    assert kubelet.rt.ListPodSandboxStats(cri.ListPodSandboxStatsRequest(
        filter=cri.PodSandboxStatsFilter(label_selector={"app": "other"}))).stats == []

    # an exited container is no longer listed
    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=busy, timeout=0))
    assert listed(cri.ContainerStatsFilter()) == [idle]


def read_flat_keyed_psi(path: Path) -> int:
    """The `some` total (µs) of a PSI file."""
    for line in path.read_text().splitlines():
        if line.startswith("some "):
            return int(dict(f.split("=") for f in line.split()[1:])["total"])
    raise AssertionError(f"no 'some' line in {path}")


def test_writable_layer_grows_when_the_container_writes(kubelet: Kubelet) -> None:
    pod_id, pod = kubelet.pod("disk")
    container_id = kubelet.run(pod_id, pod, "writer", ["sleep", "1000"])
    first = stats(kubelet, container_id).writable_layer
    assert first.timestamp > 0 and first.fs_id.mountpoint.endswith("/containers")
    assert first.HasField("used_bytes") and first.HasField("inodes_used")
    result = kubelet.exec(container_id, ["sh", "-c", "dd if=/dev/zero of=/big bs=1048576 count=4 && mkdir /d && "
                                         "touch /d/a /d/b && sync"])
    assert result.exit_code == 0, result.stderr
    second = stats(kubelet, container_id).writable_layer
    assert second.used_bytes.value >= first.used_bytes.value + 4 * 1048576
    assert second.inodes_used.value >= first.inodes_used.value + 4
    assert second.timestamp > first.timestamp


def test_pod_network_counters_move(kubelet: Kubelet) -> None:
    pod_id, pod = kubelet.pod("net")
    kubelet.run(pod_id, pod, "app", ["sleep", "1000"])
    status = kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status

    def network() -> cri.NetworkUsage:
        return kubelet.rt.PodSandboxStats(cri.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats.linux.network

    first = network()
    assert first.timestamp > 0 and first.default_interface.name == "eth0"
    assert [i.name for i in first.interfaces] == []  # lo is not the pod's network
    # the host knocks on a closed port of the pod, over the bridge: the pod's eth0 receives the SYNs and sends
    # back resets (at least 40 bytes of IP and TCP headers each way)
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((status.network.ip, 9), timeout=5).close()
    second = network().default_interface
    assert second.rx_bytes.value >= first.default_interface.rx_bytes.value + 3 * 40
    assert second.tx_bytes.value >= first.default_interface.tx_bytes.value + 3 * 40
    assert second.HasField("rx_errors") and second.HasField("tx_errors")

    # a host-network pod has no network of its own to report
    host_config_pod = cri.PodSandboxConfig()
    host_config_pod.CopyFrom(pod)
    host_config_pod.metadata.name, host_config_pod.metadata.uid = "hostnet", "uid-hostnet"
    host_config_pod.linux.security_context.namespace_options.network = cri.NODE
    host_pod = kubelet.pods.run(host_config_pod)
    host_stats = kubelet.rt.PodSandboxStats(cri.PodSandboxStatsRequest(pod_sandbox_id=host_pod)).stats.linux
    assert not host_stats.HasField("network") and host_stats.cpu.timestamp > 0


def test_metric_descriptors_and_pod_metrics(kubelet: Kubelet) -> None:
    descriptors = kubelet.rt.ListMetricDescriptors(cri.ListMetricDescriptorsRequest()).descriptors
    by_name = {d.name: d for d in descriptors}
    assert len(by_name) == len(descriptors)
    for name in ("container_cpu_usage_seconds_total", "container_memory_working_set_bytes",
                 "container_network_receive_bytes_total", "container_fs_usage_bytes", "container_last_seen"):
        assert name in by_name
    for d in descriptors:
        assert d.help and list(d.label_keys[:5]) == ["id", "image", "namespace", "pod", "container"]
    assert list(by_name["container_network_receive_bytes_total"].label_keys[5:]) == ["interface"]

    pod_id, pod = kubelet.pod("metrics")
    busy = kubelet.run(pod_id, pod, "burner", BURNER)
    assert kubelet.exec(busy, ["sh", "-c", "echo data > /file"]).exit_code == 0
    directory = cgroup_dir(kubelet, busy)
    before = usage_ns(directory)
    (pod_metrics,) = kubelet.rt.ListPodSandboxMetrics(cri.ListPodSandboxMetricsRequest()).pod_metrics
    after = usage_ns(directory)
    assert pod_metrics.pod_sandbox_id == pod_id
    every = list(pod_metrics.metrics) + [m for c in pod_metrics.container_metrics for m in c.metrics]
    for m in every:  # each metric is described, with as many label values as the descriptor has keys
        assert len(m.label_values) == len(by_name[m.name].label_keys), m.name
    pod_level = {(m.name, *m.label_values[4:]): m for m in pod_metrics.metrics}
    assert pod_level[("container_network_receive_bytes_total", "POD", "eth0")].label_values[:5] == [
        pod_id, "", "default", "metrics", "POD"]
    # the pod cgroup, as cAdvisor shows it: container ""
    pod_usage = pod_level[("container_cpu_usage_seconds_total", "", "total")]
    assert pod_usage.label_values[:5] == [pod_id, "", "default", "metrics", ""] and pod_usage.value.value >= 0
    (container,) = pod_metrics.container_metrics
    assert container.container_id == busy
    found = {m.name: m for m in container.metrics}
    usage = found["container_cpu_usage_seconds_total"]
    assert usage.label_values == [busy, kubelet.images.busybox, "default", "metrics", "burner", "total"]
    assert usage.metric_type == cri.COUNTER and usage.timestamp == 0
    assert before // 10**9 <= usage.value.value <= after // 10**9
    assert found["container_processes"].value.value >= 1
    assert found["container_threads"].value.value >= 1
    assert found["container_file_descriptors"].value.value >= 3
    assert found["container_fs_usage_bytes"].value.value > 0 and found["container_fs_usage_bytes"].timestamp > 0
    assert found["container_fs_limit_bytes"].value.value > found["container_fs_usage_bytes"].value.value
    assert found["container_start_time_seconds"].value.value > 0
    if not (directory / "memory.current").exists():  # no memory controller: no memory metrics, not zeros
        assert not [name for name in found if name.startswith("container_memory_")]
        assert found["container_spec_memory_limit_bytes"].value.value == 0  # nothing limits it
    if not (directory / "cpu.max").exists():
        assert "container_cpu_cfs_periods_total" not in found and "container_spec_cpu_period" not in found
