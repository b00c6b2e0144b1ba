"""cAdvisor's container metrics from the CRI (ListMetricDescriptors, ListPodSandboxMetrics).

With these the kubelet's /metrics/cadvisor can come from the runtime alone (PodAndContainerStatsFromCRI). The names,
help texts and label keys are cAdvisor's, as the kubelet and critest know them; every metric carries the base labels
id, image, namespace, pod and container, some one more (cpu, interface, device, ...). Network metrics are the
pod's (container "POD"); everything else is per container. Values are integers (the CRI's UInt64Value): seconds
are whole seconds. A metric whose source the host lacks (no memory controller: no memory metrics) is left out,
never sent as 0; a missing limit is reported as cAdvisor does, 0 meaning "no limit". Live values have timestamp 0
("gathered now"); the file system ones carry the time of the cached walk they come from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cri import api as cri
from cri.stats import CgroupRequest, CgroupSample, DiskUsage, NetworkSample, StatsCollector
from cri.store.containers import Container, ContainerStore
from cri.store.sandboxes import READY, Sandbox, SandboxStore
from cri.usage import live_containers, own_netns, upper_dir
from runtime.cgroups import Pressure

BASE_LABELS = ("id", "image", "namespace", "pod", "container")
COUNTER = cri.COUNTER
GAUGE = cri.GAUGE


@dataclass(frozen=True)
class Descriptor:
    name: str
    help: str
    extra_labels: tuple[str, ...] = ()

    def message(self) -> cri.MetricDescriptor:
        return cri.MetricDescriptor(name=self.name, help=self.help, label_keys=[*BASE_LABELS, *self.extra_labels])


_D = Descriptor
DESCRIPTORS: tuple[Descriptor, ...] = (
    # cpu
    _D("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", ("cpu",)),
    _D("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds."),
    _D("container_cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds."),
    _D("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals."),
    _D("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals."),
    _D("container_cpu_cfs_throttled_seconds_total", "Total time duration the container has been throttled."),
    # memory
    _D("container_memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of when it "
       "was accessed."),
    _D("container_memory_working_set_bytes", "Current working set in bytes."),
    _D("container_memory_rss", "Size of RSS in bytes."),
    _D("container_memory_cache", "Number of bytes of page cache memory."),
    _D("container_memory_mapped_file", "Size of memory mapped files in bytes."),
    _D("container_memory_kernel_usage", "Size of kernel memory allocated in bytes."),
    _D("container_memory_swap", "Container swap usage in bytes."),
    _D("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes."),
    _D("container_memory_failcnt", "Number of memory usage hits limits."),
    _D("container_memory_failures_total", "Cumulative count of memory allocation failures.",
       ("failure_type", "scope")),
    _D("container_oom_events_total", "Count of out of memory events observed for the container."),
    # processes
    _D("container_processes", "Number of processes running inside the container."),
    _D("container_threads", "Number of threads running inside the container."),
    _D("container_threads_max", "Maximum number of threads allowed inside the container, infinity if value is "
       "zero."),
    _D("container_file_descriptors", "Number of open file descriptors for the container."),
    _D("container_sockets", "Number of open sockets for the container."),
    # file system (the writable layer) and block I/O
    _D("container_fs_usage_bytes", "Number of bytes that are consumed by the container on this filesystem."),
    _D("container_fs_inodes_total", "Number of Inodes."),
    _D("container_fs_inodes_free", "Number of available Inodes."),
    _D("container_fs_limit_bytes", "Number of bytes that can be consumed by the container on this filesystem."),
    _D("container_fs_reads_bytes_total", "Cumulative count of bytes read.", ("device",)),
    _D("container_fs_reads_total", "Cumulative count of reads completed.", ("device",)),
    _D("container_fs_writes_bytes_total", "Cumulative count of bytes written.", ("device",)),
    _D("container_fs_writes_total", "Cumulative count of writes completed.", ("device",)),
    _D("container_blkio_device_usage_total", "Blkio device bytes usage.", ("device", "major", "minor", "operation")),
    # network (the pod's)
    _D("container_network_receive_bytes_total", "Cumulative count of bytes received.", ("interface",)),
    _D("container_network_receive_packets_total", "Cumulative count of packets received.", ("interface",)),
    _D("container_network_receive_packets_dropped_total", "Cumulative count of packets dropped while receiving.",
       ("interface",)),
    _D("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving.",
       ("interface",)),
    _D("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.", ("interface",)),
    _D("container_network_transmit_packets_total", "Cumulative count of packets transmitted.", ("interface",)),
    _D("container_network_transmit_packets_dropped_total", "Cumulative count of packets dropped while "
       "transmitting.", ("interface",)),
    _D("container_network_transmit_errors_total", "Cumulative count of errors encountered while transmitting.",
       ("interface",)),
    # pressure
    _D("container_pressure_cpu_stalled_seconds_total", "Total time duration no tasks in the container could make "
       "progress due to CPU congestion."),
    _D("container_pressure_cpu_waiting_seconds_total", "Total time duration tasks in the container have waited "
       "due to CPU congestion."),
    _D("container_pressure_memory_stalled_seconds_total", "Total time duration no tasks in the container could "
       "make progress due to memory congestion."),
    _D("container_pressure_memory_waiting_seconds_total", "Total time duration tasks in the container have waited "
       "due to memory congestion."),
    _D("container_pressure_io_stalled_seconds_total", "Total time duration no tasks in the container could make "
       "progress due to IO congestion."),
    _D("container_pressure_io_waiting_seconds_total", "Total time duration tasks in the container have waited due "
       "to IO congestion."),
    # spec
    _D("container_spec_cpu_period", "CPU period of the container."),
    _D("container_spec_cpu_quota", "CPU quota of the container."),
    _D("container_spec_cpu_shares", "CPU share of the container."),
    _D("container_spec_memory_limit_bytes", "Memory limit for the container."),
    _D("container_spec_memory_reservation_limit_bytes", "Memory reservation limit for the container."),
    _D("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container."),
    _D("container_start_time_seconds", "Start time of the container since unix epoch in seconds."),
    _D("container_last_seen", "Last time a container was seen by the exporter."),
)
LABEL_COUNT = {d.name: len(BASE_LABELS) + len(d.extra_labels) for d in DESCRIPTORS}
NS = 1_000_000_000
USEC = 1_000_000


class _Metrics:
    """Collects the metrics of one container (or the pod) with its base label values."""

    def __init__(self, base: Sequence[str]) -> None:
        self.base = list(base)
        self.items: list[cri.Metric] = []

    def add(self, name: str, kind: int, value: int | None, *extra: str, timestamp: int = 0) -> None:
        if value is None:
            return
        labels = [*self.base, *extra]
        assert len(labels) == LABEL_COUNT[name], name
        self.items.append(cri.Metric(name=name, timestamp=timestamp, metric_type=kind,  # type: ignore[arg-type]
                                     label_values=labels, value=cri.UInt64Value(value=max(0, value))))


def _limit(text: str | None) -> int | None:
    """A cgroup limit file's value: bytes, 0 for "max" (cAdvisor's "no limit"), None when there is no file."""
    if text is None:
        return None
    return 0 if text == "max" else int(text)


def _pressure(m: _Metrics, resource: str, pressure: Pressure | None) -> None:
    if pressure is None:
        return
    if pressure.full is not None:
        m.add(f"container_pressure_{resource}_stalled_seconds_total", COUNTER, pressure.full.total // USEC)
    if pressure.some is not None:
        m.add(f"container_pressure_{resource}_waiting_seconds_total", COUNTER, pressure.some.total // USEC)


def _cgroup_metrics(m: _Metrics, sample: CgroupSample) -> None:
    stats = sample.stats
    if stats is None:
        return
    cpu = stats.cpu
    if cpu is not None:
        m.add("container_cpu_usage_seconds_total", COUNTER,
              None if cpu.usage_usec is None else cpu.usage_usec // USEC, "total")
        m.add("container_cpu_user_seconds_total", COUNTER, None if cpu.user_usec is None else cpu.user_usec // USEC)
        m.add("container_cpu_system_seconds_total", COUNTER,
              None if cpu.system_usec is None else cpu.system_usec // USEC)
        m.add("container_cpu_cfs_periods_total", COUNTER, cpu.nr_periods)
        m.add("container_cpu_cfs_throttled_periods_total", COUNTER, cpu.nr_throttled)
        m.add("container_cpu_cfs_throttled_seconds_total", COUNTER,
              None if cpu.throttled_usec is None else cpu.throttled_usec // USEC)
    memory = stats.memory
    if memory is not None:
        m.add("container_memory_usage_bytes", GAUGE, memory.current)
        m.add("container_memory_working_set_bytes", GAUGE, memory.working_set)
        m.add("container_memory_rss", GAUGE, memory.anon)
        m.add("container_memory_cache", GAUGE, memory.file)
        m.add("container_memory_mapped_file", GAUGE, memory.stat.get("file_mapped"))
        m.add("container_memory_kernel_usage", GAUGE, memory.stat.get("kernel"))
        m.add("container_memory_swap", GAUGE, memory.swap_current)
        m.add("container_memory_max_usage_bytes", GAUGE, memory.peak)
        m.add("container_memory_failcnt", COUNTER, memory.events.get("max"))
        for failure, value in (("pgfault", memory.pgfault), ("pgmajfault", memory.pgmajfault)):
            # memory.stat of cgroup v2 counts the subtree; a container's cgroup is a leaf: both scopes agree
            for scope in ("container", "hierarchy"):
                m.add("container_memory_failures_total", COUNTER, value, failure, scope)
        m.add("container_oom_events_total", COUNTER, memory.oom_kill)
    processes = sample.processes
    if processes is not None:
        m.add("container_processes", GAUGE,
              stats.pids.current if stats.pids is not None else processes.processes)
        m.add("container_threads", GAUGE, processes.threads)
        m.add("container_file_descriptors", GAUGE, processes.file_descriptors)
        m.add("container_sockets", GAUGE, processes.sockets)
    limits = sample.limits
    if limits is not None:
        # no pids.max (no pids controller) is no limit: infinity, which this metric says with 0
        m.add("container_threads_max", GAUGE, _limit(limits.pids_max) or 0)
        if limits.cpu_max is not None:
            quota, _, period = limits.cpu_max.partition(" ")
            m.add("container_spec_cpu_period", GAUGE, int(period) if period.isdigit() else None)
            m.add("container_spec_cpu_quota", GAUGE, int(quota) if quota.isdigit() else None)
        if limits.cpu_weight is not None:
            # cgroup v2 weight back to v1 shares as cAdvisor does (the linear mapping)
            m.add("container_spec_cpu_shares", GAUGE, 2 + (limits.cpu_weight - 1) * 262142 // 9999)
        # no memory controller: nothing limits the container, cAdvisor's 0
        m.add("container_spec_memory_limit_bytes", GAUGE, _limit(limits.memory_max) or 0)
        m.add("container_spec_memory_swap_limit_bytes", GAUGE, _limit(limits.memory_swap_max) or 0)
        m.add("container_spec_memory_reservation_limit_bytes", GAUGE, _limit(limits.memory_low))
    if stats.io is not None:
        for dev, counters in sorted(stats.io.devices.items()):
            name = (sample.devices or {}).get(dev, "")
            major, _, minor = dev.partition(":")
            m.add("container_fs_reads_bytes_total", COUNTER, counters.get("rbytes"), name)
            m.add("container_fs_writes_bytes_total", COUNTER, counters.get("wbytes"), name)
            m.add("container_fs_reads_total", COUNTER, counters.get("rios"), name)
            m.add("container_fs_writes_total", COUNTER, counters.get("wios"), name)
            m.add("container_blkio_device_usage_total", COUNTER, counters.get("rbytes"), name, major, minor, "Read")
            m.add("container_blkio_device_usage_total", COUNTER, counters.get("wbytes"), name, major, minor, "Write")
    _pressure(m, "cpu", stats.cpu_pressure)
    _pressure(m, "memory", stats.memory_pressure)
    _pressure(m, "io", stats.io_pressure)


def _disk_metrics(m: _Metrics, disk: DiskUsage | None) -> None:
    if disk is None:
        return
    ts = disk.timestamp  # cached: the time of the walk
    m.add("container_fs_usage_bytes", GAUGE, disk.used_bytes, timestamp=ts)
    m.add("container_fs_limit_bytes", GAUGE, disk.capacity_bytes, timestamp=ts)
    m.add("container_fs_inodes_total", GAUGE, disk.inodes_total, timestamp=ts)
    m.add("container_fs_inodes_free", GAUGE, disk.inodes_free, timestamp=ts)


def _network_metrics(m: _Metrics, network: NetworkSample | None) -> None:
    if network is None:
        return
    for c in network.interfaces:
        if c.name == "lo":
            continue
        for direction, values in (("receive", (c.rx_bytes, c.rx_packets, c.rx_dropped, c.rx_errors)),
                                  ("transmit", (c.tx_bytes, c.tx_packets, c.tx_dropped, c.tx_errors))):
            for what, value in zip(("bytes", "packets", "packets_dropped", "errors"), values, strict=True):
                m.add(f"container_network_{direction}_{what}_total", COUNTER, value, c.name)


def container_metrics(container: Container, sandbox: Sandbox, sample: CgroupSample, disk: DiskUsage | None,
                      now: int) -> cri.ContainerMetrics:
    pod = sandbox.meta.config.metadata
    m = _Metrics((container.id, container.meta.image_name, pod.namespace, pod.name,
                  container.meta.config.metadata.name))
    _cgroup_metrics(m, sample)
    _disk_metrics(m, disk)
    started = container.status.started_at or container.meta.created_at
    m.add("container_start_time_seconds", GAUGE, started // NS)
    m.add("container_last_seen", GAUGE, now // NS)
    return cri.ContainerMetrics(container_id=container.id, metrics=m.items)


async def pod_sandbox_metrics(stats: StatsCollector, sandboxes: SandboxStore, containers: ContainerStore,
                              now: int) -> list[cri.PodSandboxMetrics]:
    """The metrics of every ready pod: its network's, and each created and running container's."""
    ready = sorted((s for s in sandboxes.all() if s.status.state == READY), key=lambda s: s.meta.created_at)
    members = {s.id: live_containers(containers, s.id) for s in ready}
    every = [c for cs in members.values() for c in cs]
    samples = await stats.cgroups([CgroupRequest(c.id, c.meta.cgroup, processes=True, open_files=True,
                                                 limits=True) for c in every])
    disks = await stats.disk_usage({c.id: upper_dir(c) for c in every})
    networks = await stats.network({s.id: ns for s in ready if (ns := own_netns(s)) is not None})
    out = []
    for sandbox in ready:
        pod = sandbox.meta.config.metadata
        pod_metrics = _Metrics((sandbox.id, "", pod.namespace, pod.name, "POD"))
        _network_metrics(pod_metrics, networks.get(sandbox.id))
        out.append(cri.PodSandboxMetrics(
            pod_sandbox_id=sandbox.id, metrics=pod_metrics.items,
            container_metrics=[container_metrics(c, sandbox, samples[c.id], disks.get(c.id), now)
                               for c in members[sandbox.id]]))
    return out
