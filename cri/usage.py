"""The CRI usage messages of the stats RPCs (ContainerStats, PodSandboxStats and their lists), from the samples
`cri.stats.StatsCollector` takes.

CpuUsage, MemoryUsage, SwapUsage and IoUsage are always there with their timestamp; a value inside them is set only
when the host reported it (cgroup v2 files; a missing controller or file leaves it unset, never 0). Host-network
pods have no network of their own: their stats carry none.
"""

from __future__ import annotations

from pathlib import Path

from cri import api as cri
from cri.stats import CgroupRequest, CgroupSample, DiskUsage, NetworkSample, StatsCollector
from cri.store.containers import EXITED, Container, ContainerStore
from cri.store.sandboxes import Sandbox, SandboxStore
from runtime.cgroups import Pressure

# the interface the kubelet reports a pod's network by (its network.DefaultInterfaceName)
DEFAULT_INTERFACE = "eth0"


def u64(value: int | None) -> cri.UInt64Value | None:
    return None if value is None else cri.UInt64Value(value=max(0, value))


def psi(pressure: Pressure | None) -> cri.PsiStats | None:
    """PSI in CRI units: totals in ns (the kernel counts µs), averages in % as the kernel gives them."""
    if pressure is None:
        return None
    out = cri.PsiStats()
    for line, target in ((pressure.full, out.Full), (pressure.some, out.Some)):
        if line is not None:
            target.CopyFrom(cri.PsiData(Total=line.total * 1000, Avg10=line.avg10, Avg60=line.avg60,
                                        Avg300=line.avg300))
    return out


def cpu_usage(sample: CgroupSample) -> cri.CpuUsage:
    usage = cri.CpuUsage(timestamp=sample.timestamp)
    stats = sample.stats
    cpu = stats.cpu if stats is not None else None
    if cpu is not None and cpu.usage_usec is not None:
        usage.usage_core_nano_seconds.value = cpu.usage_usec * 1000
    if sample.nano_cores is not None:
        usage.usage_nano_cores.value = sample.nano_cores
    pressure = psi(stats.cpu_pressure if stats is not None else None)
    if pressure is not None:
        usage.psi.CopyFrom(pressure)
    return usage


def memory_usage(sample: CgroupSample) -> cri.MemoryUsage:
    usage = cri.MemoryUsage(timestamp=sample.timestamp)
    stats = sample.stats
    memory = stats.memory if stats is not None else None
    if memory is not None:
        working_set = memory.working_set
        available = None
        if memory.limit is not None and working_set is not None:
            available = memory.limit - working_set
        for name, value in (("working_set_bytes", working_set), ("available_bytes", available),
                            ("usage_bytes", memory.current), ("rss_bytes", memory.anon),
                            ("page_faults", memory.pgfault), ("major_page_faults", memory.pgmajfault)):
            wrapped = u64(value)
            if wrapped is not None:
                getattr(usage, name).CopyFrom(wrapped)
    pressure = psi(stats.memory_pressure if stats is not None else None)
    if pressure is not None:
        usage.psi.CopyFrom(pressure)
    return usage


def swap_usage(sample: CgroupSample) -> cri.SwapUsage:
    usage = cri.SwapUsage(timestamp=sample.timestamp)
    memory = sample.stats.memory if sample.stats is not None else None
    if memory is not None and memory.swap_current is not None:
        usage.swap_usage_bytes.value = memory.swap_current
    return usage


def io_usage(sample: CgroupSample) -> cri.IoUsage:
    usage = cri.IoUsage(timestamp=sample.timestamp)
    pressure = psi(sample.stats.io_pressure if sample.stats is not None else None)
    if pressure is not None:
        usage.psi.CopyFrom(pressure)
    return usage


def writable_layer(layers_dir: Path, disk: DiskUsage | None) -> cri.FilesystemUsage | None:
    if disk is None:
        return None
    # the dir holding every writable layer, as ImageFsInfo names the image store's: the kubelet resolves it to
    # its file system
    return cri.FilesystemUsage(
        timestamp=disk.timestamp, fs_id=cri.FilesystemIdentifier(mountpoint=str(layers_dir)),
        used_bytes=cri.UInt64Value(value=disk.used_bytes), inodes_used=cri.UInt64Value(value=disk.inodes_used))


def upper_dir(container: Container) -> str:
    return f"{container.meta.container_dir}/upper"


def container_stats(layers_dir: Path, container: Container, sample: CgroupSample,
                    disk: DiskUsage | None) -> cri.ContainerStats:
    config = container.meta.config
    stats = cri.ContainerStats(
        attributes=cri.ContainerAttributes(id=container.id, metadata=config.metadata, labels=config.labels,
                                           annotations=config.annotations),
        cpu=cpu_usage(sample), memory=memory_usage(sample), swap=swap_usage(sample), io=io_usage(sample))
    layer = writable_layer(layers_dir, disk)
    if layer is not None:
        stats.writable_layer.CopyFrom(layer)
    return stats


async def containers_stats(stats: StatsCollector, layers_dir: Path, containers: list[Container]
                           ) -> list[cri.ContainerStats]:
    """Stats of these containers, in their order (one read of all their cgroups and layers)."""
    samples = await stats.cgroups([CgroupRequest(c.id, c.meta.cgroup) for c in containers])
    disks = await stats.disk_usage({c.id: upper_dir(c) for c in containers})
    return [container_stats(layers_dir, c, samples[c.id], disks.get(c.id)) for c in containers]


def live_containers(containers: ContainerStore, sandbox_id: str | None = None) -> list[Container]:
    """Created and running containers (of one pod, or all), oldest first: an exited one has nothing left to use."""
    found = containers.all() if sandbox_id is None else containers.of_sandbox(sandbox_id)
    return sorted((c for c in found if c.status.state != EXITED), key=lambda c: c.meta.created_at)


def own_netns(sandbox: Sandbox) -> str | None:
    return None if sandbox.meta.host_network else sandbox.meta.namespaces.get("net")


def process_usage(sample: CgroupSample) -> cri.ProcessUsage:
    usage = cri.ProcessUsage(timestamp=sample.timestamp)
    stats = sample.stats
    if stats is not None and stats.pids is not None and stats.pids.current is not None:
        usage.process_count.value = stats.pids.current  # the kernel's count of the subtree
    elif sample.processes is not None:
        usage.process_count.value = sample.processes.processes  # cgroup.procs of the subtree, counted
    return usage


def network_usage(sample: NetworkSample) -> cri.NetworkUsage:
    usage = cri.NetworkUsage(timestamp=sample.timestamp)
    for counters in sample.interfaces:
        if counters.name == "lo":
            continue
        iface = cri.NetworkInterfaceUsage(
            name=counters.name, rx_bytes=cri.UInt64Value(value=counters.rx_bytes),
            rx_errors=cri.UInt64Value(value=counters.rx_errors), tx_bytes=cri.UInt64Value(value=counters.tx_bytes),
            tx_errors=cri.UInt64Value(value=counters.tx_errors))
        if counters.name == DEFAULT_INTERFACE:
            usage.default_interface.CopyFrom(iface)
        else:
            usage.interfaces.append(iface)
    return usage


async def sandboxes_stats(stats: StatsCollector, layers_dir: Path, containers: ContainerStore,
                          sandboxes: list[Sandbox]) -> list[cri.PodSandboxStats]:
    """Stats of these pods and of their created and running containers (one read for all of them)."""
    members = {s.id: live_containers(containers, s.id) for s in sandboxes}
    requests = [CgroupRequest(s.id, s.meta.cgroup, processes=True) for s in sandboxes]
    requests += [CgroupRequest(c.id, c.meta.cgroup) for cs in members.values() for c in cs]
    samples = await stats.cgroups(requests)
    disks = await stats.disk_usage({c.id: upper_dir(c) for cs in members.values() for c in cs})
    networks = await stats.network({s.id: ns for s in sandboxes if (ns := own_netns(s)) is not None})
    out = []
    for sandbox in sandboxes:
        config = sandbox.meta.config
        sample = samples[sandbox.id]
        linux = cri.LinuxPodSandboxStats(
            cpu=cpu_usage(sample), memory=memory_usage(sample), process=process_usage(sample), io=io_usage(sample),
            containers=[container_stats(layers_dir, c, samples[c.id], disks.get(c.id)) for c in members[sandbox.id]])
        network = networks.get(sandbox.id)
        if network is not None:
            linux.network.CopyFrom(network_usage(network))
        out.append(cri.PodSandboxStats(
            attributes=cri.PodSandboxAttributes(id=sandbox.id, metadata=config.metadata, labels=config.labels,
                                                annotations=config.annotations),
            linux=linux))
    return out


def forget_removed(stats: StatsCollector, containers: ContainerStore, sandboxes: SandboxStore) -> None:
    """Rates and caches of containers and pods that are gone are dropped (after a listing)."""
    stats.forget_except([c.id for c in containers.all()] + [s.id for s in sandboxes.all()])
