"""PodSandboxStats and ListPodSandboxStats: the pod cgroup's CPU, memory and processes, the pod's network
interfaces (read inside its network namespace by a network helper), and the stats of its containers.

A listing covers ready pods (a stopped pod has nothing running); PodSandboxStats of a stopped pod reports what
is left. Host-network pods have no network of their own: their stats carry none.
"""

from __future__ import annotations

from cri import api as cri
from cri.service.container_stats import container_stats, cpu_usage, io_usage, memory_usage, upper_dir
from cri.service.context import ServiceContext
from cri.stats import CgroupRequest, CgroupSample, NetworkSample
from cri.store.containers import EXITED
from cri.store.sandboxes import READY, Sandbox

# the interface the kubelet reports a pod's network by (its network.DefaultInterfaceName)
DEFAULT_INTERFACE = "eth0"


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


async def stats_of(ctx: ServiceContext, sandboxes: list[Sandbox]) -> list[cri.PodSandboxStats]:
    """Stats of these pods and of their created and running containers (one read for all of them)."""
    containers = {s.id: sorted((c for c in ctx.containers.of_sandbox(s.id) if c.status.state != EXITED),
                               key=lambda c: c.meta.created_at) for s in sandboxes}
    requests = [CgroupRequest(s.id, s.meta.cgroup, processes=True) for s in sandboxes]
    requests += [CgroupRequest(c.id, c.meta.cgroup) for cs in containers.values() for c in cs]
    samples = await ctx.stats.cgroups(requests)
    disks = await ctx.stats.disk_usage({c.id: upper_dir(c) for cs in containers.values() for c in cs})
    networks = await ctx.stats.network({s.id: ns for s in sandboxes if (ns := own_netns(s)) is not None})
    out = []
    for sandbox in sandboxes:
        config = sandbox.meta.config
        sample = samples[sandbox.id]
        linux = cri.LinuxPodSandboxStats(
            cpu=cpu_usage(sample), memory=memory_usage(sample), process=process_usage(sample), io=io_usage(sample),
            containers=[container_stats(ctx, c, samples[c.id], disks.get(c.id)) for c in containers[sandbox.id]])
        network = networks.get(sandbox.id)
        if network is not None:
            linux.network.CopyFrom(network_usage(network))
        out.append(cri.PodSandboxStats(
            attributes=cri.PodSandboxAttributes(id=sandbox.id, metadata=config.metadata, labels=config.labels,
                                                annotations=config.annotations),
            linux=linux))
    return out


def _matches(sandbox: Sandbox, flt: cri.PodSandboxStatsFilter) -> bool:
    if flt.id and not sandbox.id.startswith(flt.id):
        return False
    labels = sandbox.meta.config.labels
    return all(labels.get(k) == v for k, v in flt.label_selector.items())


async def pod_sandbox_stats(ctx: ServiceContext, request: cri.PodSandboxStatsRequest
                            ) -> cri.PodSandboxStatsResponse:
    sandbox = ctx.sandboxes.get(request.pod_sandbox_id)
    (stats,) = await stats_of(ctx, [sandbox])
    return cri.PodSandboxStatsResponse(stats=stats)


async def list_pod_sandbox_stats(ctx: ServiceContext, request: cri.ListPodSandboxStatsRequest
                                 ) -> cri.ListPodSandboxStatsResponse:
    sandboxes = [s for s in ctx.sandboxes.all() if s.status.state == READY and _matches(s, request.filter)]
    sandboxes.sort(key=lambda s: s.meta.created_at)
    stats = await stats_of(ctx, sandboxes)
    ctx.forget_stats_of_removed()
    return cri.ListPodSandboxStatsResponse(stats=stats)
