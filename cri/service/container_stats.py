"""ContainerStats and ListContainerStats, and the CRI messages the pod stats share.

CpuUsage, MemoryUsage, SwapUsage and IoUsage are always there with their timestamp; a value inside them is set only
when the host reported it (cgroup v2 files; a missing controller or file leaves it unset, never 0). Listings cover
created and running containers ("stats of all running containers"; an exited one has nothing left to use).
"""

from __future__ import annotations

from cri import api as cri
from cri.service.context import ServiceContext
from cri.stats import CgroupRequest, CgroupSample, DiskUsage
from cri.store.containers import EXITED, Container
from runtime.cgroups import Pressure


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


def writable_layer(ctx: ServiceContext, disk: DiskUsage | None) -> cri.FilesystemUsage | None:
    if disk is None:
        return None
    # the dir holding every writable layer, as ImageFsInfo names the image store's: the kubelet resolves it to
    # its file system
    return cri.FilesystemUsage(
        timestamp=disk.timestamp, fs_id=cri.FilesystemIdentifier(mountpoint=str(ctx.root_dir / "containers")),
        used_bytes=cri.UInt64Value(value=disk.used_bytes), inodes_used=cri.UInt64Value(value=disk.inodes_used))


def upper_dir(container: Container) -> str:
    return f"{container.meta.container_dir}/upper"


def container_stats(ctx: ServiceContext, container: Container, sample: CgroupSample,
                    disk: DiskUsage | None) -> cri.ContainerStats:
    config = container.meta.config
    stats = cri.ContainerStats(
        attributes=cri.ContainerAttributes(id=container.id, metadata=config.metadata, labels=config.labels,
                                           annotations=config.annotations),
        cpu=cpu_usage(sample), memory=memory_usage(sample), swap=swap_usage(sample), io=io_usage(sample))
    layer = writable_layer(ctx, disk)
    if layer is not None:
        stats.writable_layer.CopyFrom(layer)
    return stats


async def stats_of(ctx: ServiceContext, containers: list[Container]) -> list[cri.ContainerStats]:
    """Stats of these containers, in their order (one read of all their cgroups and layers)."""
    samples = await ctx.stats.cgroups([CgroupRequest(c.id, c.meta.cgroup) for c in containers])
    disks = await ctx.stats.disk_usage({c.id: upper_dir(c) for c in containers})
    return [container_stats(ctx, c, samples[c.id], disks.get(c.id)) for c in containers]


def _matches(container: Container, flt: cri.ContainerStatsFilter) -> bool:
    if flt.id and not container.id.startswith(flt.id):
        return False
    if flt.pod_sandbox_id and not container.meta.sandbox_id.startswith(flt.pod_sandbox_id):
        return False
    labels = container.meta.config.labels
    return all(labels.get(k) == v for k, v in flt.label_selector.items())


def live_containers(ctx: ServiceContext) -> list[Container]:
    """Created and running containers, oldest first."""
    containers = [c for c in ctx.containers.all() if c.status.state != EXITED]
    containers.sort(key=lambda c: c.meta.created_at)
    return containers


async def container_stats_rpc(ctx: ServiceContext, request: cri.ContainerStatsRequest
                              ) -> cri.ContainerStatsResponse:
    container = ctx.containers.get(request.container_id)
    (stats,) = await stats_of(ctx, [container])
    return cri.ContainerStatsResponse(stats=stats)


async def list_container_stats(ctx: ServiceContext, request: cri.ListContainerStatsRequest
                               ) -> cri.ListContainerStatsResponse:
    containers = [c for c in live_containers(ctx) if _matches(c, request.filter)]
    stats = await stats_of(ctx, containers)
    ctx.forget_stats_of_removed()
    return cri.ListContainerStatsResponse(stats=stats)
