"""CRI LinuxContainerResources as OCI `linux.resources`: at create (the spec) and for live updates
(UpdateContainerResources, UpdatePodSandboxResources)."""

from __future__ import annotations

from typing import Any

from cri import api as cri
from runtime.errors import InvalidArgument


def oci_resources(r: cri.LinuxContainerResources, *, swap_limit: bool = True) -> dict[str, Any]:
    """CRI LinuxContainerResources as OCI `linux.resources` (without devices); 0 means unset.
    Also what UpdateContainerResources and UpdatePodSandboxResources apply live."""
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if r.cpu_shares:
        if r.cpu_shares < 0:
            raise InvalidArgument(f"cpu_shares {r.cpu_shares} is negative")
        cpu["shares"] = r.cpu_shares
    if r.cpu_quota:
        cpu["quota"] = r.cpu_quota
    if r.cpu_period:
        if r.cpu_period < 0:
            raise InvalidArgument(f"cpu_period {r.cpu_period} is negative")
        cpu["period"] = r.cpu_period
    if r.cpuset_cpus:
        cpu["cpus"] = r.cpuset_cpus
    if r.cpuset_mems:
        cpu["mems"] = r.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    memory: dict[str, Any] = {}
    if r.memory_limit_in_bytes:
        if r.memory_limit_in_bytes < 0:
            raise InvalidArgument(f"memory_limit_in_bytes {r.memory_limit_in_bytes} is negative")
        memory["limit"] = r.memory_limit_in_bytes
        if not r.memory_swap_limit_in_bytes and swap_limit:
            memory["swap"] = r.memory_limit_in_bytes  # no swap unless asked for
    if r.memory_swap_limit_in_bytes and swap_limit:
        swap = r.memory_swap_limit_in_bytes
        if swap != -1 and (swap < 0 or (r.memory_limit_in_bytes and swap < r.memory_limit_in_bytes)):
            raise InvalidArgument(f"memory_swap_limit_in_bytes {swap} is below the memory limit")
        memory["swap"] = swap
    if memory:
        out["memory"] = memory
    if r.hugepage_limits:
        out["hugepageLimits"] = [{"pageSize": h.page_size, "limit": h.limit} for h in r.hugepage_limits]
    if r.unified:
        out["unified"] = dict(sorted(r.unified.items()))
    return out
