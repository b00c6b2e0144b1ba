"""crisp's pods and containers as NRI sees them, and resources between CRI and NRI.

A pod is its CRI config (metadata, labels, annotations, cgroup parent) with crisp's state (namespaces, IPs, the
pod's init). A container being created is read from its OCI spec (what it will run with); one that exists is
read from the store (its CRI config and status), which is what Synchronize and the later events carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cri import api as cri
from cri.store.containers import CREATED, EXITED, RUNNING, Container
from cri.store.sandboxes import Sandbox
from runtime.nri import api

_STATES = {CREATED: api.CONTAINER_CREATED, RUNNING: api.CONTAINER_RUNNING, EXITED: api.CONTAINER_STOPPED}
_NS_KINDS = {"net": "network", "ipc": "ipc", "uts": "uts", "pid": "pid"}


def pod_sandbox(sandbox: Sandbox) -> Any:
    meta, config = sandbox.meta, sandbox.meta.config
    pod = api.PodSandbox(id=meta.id, name=config.metadata.name, uid=config.metadata.uid,
                         namespace=config.metadata.namespace, labels=dict(config.labels),
                         annotations=dict(config.annotations), runtime_handler=meta.runtime_handler,
                         ips=list(sandbox.status.ips))
    if sandbox.status.pod_init is not None:
        pod.pid = sandbox.status.pod_init[0]
    pod.linux.cgroup_parent = config.linux.cgroup_parent
    pod.linux.cgroups_path = meta.cgroup
    for kind, path in sorted(meta.namespaces.items()):
        pod.linux.namespaces.add(type=_NS_KINDS.get(kind, kind), path=path)
    if config.linux.HasField("overhead"):
        pod.linux.pod_overhead.CopyFrom(nri_resources(config.linux.overhead))
    if config.linux.HasField("resources"):
        pod.linux.pod_resources.CopyFrom(nri_resources(config.linux.resources))
    return pod


def container(c: Container) -> Any:
    """An existing container, from the store."""
    meta, status, config = c.meta, c.status, c.meta.config
    out = api.Container(
        id=meta.id, pod_sandbox_id=meta.sandbox_id, name=config.metadata.name,
        state=_STATES.get(status.state, api.CONTAINER_UNKNOWN), labels=dict(config.labels),
        annotations=dict(config.annotations), args=[*config.command, *config.args],
        env=[f"{kv.key}={_text(kv.value)}" for kv in config.envs], created_at=meta.created_at,
        started_at=status.started_at, finished_at=status.finished_at, exit_code=status.exit_code,
        status_reason=status.reason, status_message=status.message,
        CDI_devices=[api.CDIDevice(name=d.name) for d in config.CDI_devices])
    if status.state == RUNNING:
        out.pid = status.pid
    out.linux.cgroups_path = meta.cgroup
    if status.resources:
        out.linux.resources.CopyFrom(nri_resources(cri.LinuxContainerResources.FromString(
            bytes.fromhex(status.resources))))
    out.user.uid, out.user.gid = meta.uid, meta.gid
    out.user.additional_gids.extend(meta.groups)
    out.image.name = meta.image_name
    out.image.digest = meta.image_ref.partition("@")[2]
    out.image.config_digest = meta.image_id
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def creating_container(container_id: str, sandbox_id: str, config: cri.ContainerConfig, spec: Mapping[str, Any],
                       created_at: int) -> Any:
    """A container being created: what its OCI spec says it will be."""
    process, linux = spec.get("process", {}), spec.get("linux", {})
    out = api.Container(id=container_id, pod_sandbox_id=sandbox_id, name=config.metadata.name,
                        state=api.CONTAINER_UNKNOWN, labels=dict(config.labels),
                        annotations=dict(spec.get("annotations", {})), args=list(process.get("args", [])),
                        env=list(process.get("env", [])), created_at=created_at,
                        CDI_devices=[api.CDIDevice(name=d.name) for d in config.CDI_devices])
    for m in spec.get("mounts", []):
        out.mounts.add(destination=m.get("destination", ""), type=m.get("type", ""), source=m.get("source", ""),
                       options=m.get("options", []))
    for kind, field in (("prestart", "prestart"), ("createRuntime", "create_runtime"),
                        ("createContainer", "create_container"), ("startContainer", "start_container"),
                        ("poststart", "poststart"), ("poststop", "poststop")):
        for hook in spec.get("hooks", {}).get(kind, []):
            h = getattr(out.hooks, field).add(path=hook["path"], args=hook.get("args", []), env=hook.get("env", []))
            if "timeout" in hook:
                h.timeout.value = hook["timeout"]
    for rlimit in process.get("rlimits", []):
        out.rlimits.add(type=rlimit["type"], hard=rlimit["hard"], soft=rlimit["soft"])
    user = process.get("user", {})
    out.user.uid, out.user.gid = user.get("uid", 0), user.get("gid", 0)
    out.user.additional_gids.extend(user.get("additionalGids", []))
    for ns in linux.get("namespaces", []):
        out.linux.namespaces.add(type=ns.get("type", ""), path=ns.get("path", ""))
    for d in linux.get("devices", []):
        device = out.linux.devices.add(path=d["path"], type=d.get("type", ""), major=d.get("major", 0),
                                       minor=d.get("minor", 0))
        for key, name in (("fileMode", "file_mode"), ("uid", "uid"), ("gid", "gid")):
            if key in d:
                getattr(device, name).value = d[key]
    out.linux.resources.CopyFrom(_oci_resources(linux.get("resources", {})))
    if "oomScoreAdj" in process:
        out.linux.oom_score_adj.value = process["oomScoreAdj"]
    out.linux.cgroups_path = linux.get("cgroupsPath", "")
    for key, value in linux.get("sysctl", {}).items():
        out.linux.sysctl[key] = value
    return out


def _oci_resources(res: Mapping[str, Any]) -> Any:
    out = api.LinuxResources()
    memory, cpu = res.get("memory", {}), res.get("cpu", {})
    for key in ("limit", "reservation", "swap"):
        if key in memory:
            getattr(out.memory, key).value = memory[key]
    for key in ("shares", "quota", "period"):
        if key in cpu:
            getattr(out.cpu, key).value = cpu[key]
    out.cpu.cpus, out.cpu.mems = cpu.get("cpus", ""), cpu.get("mems", "")
    for limit in res.get("hugepageLimits", []):
        out.hugepage_limits.add(page_size=limit["pageSize"], limit=limit["limit"])
    for key, value in res.get("unified", {}).items():
        out.unified[key] = value
    if "pids" in res:
        out.pids.limit = res["pids"].get("limit", 0)
    for rule in res.get("devices", []):
        device = out.devices.add(allow=rule.get("allow", False), type=rule.get("type", ""),
                                 access=rule.get("access", ""))
        for key in ("major", "minor"):
            if key in rule:
                getattr(device, key).value = rule[key]
    return out


def nri_resources(res: cri.LinuxContainerResources) -> Any:
    out = api.LinuxResources()
    if res.memory_limit_in_bytes:
        out.memory.limit.value = res.memory_limit_in_bytes
    if res.memory_swap_limit_in_bytes:
        out.memory.swap.value = res.memory_swap_limit_in_bytes
    if res.cpu_shares:
        out.cpu.shares.value = res.cpu_shares
    if res.cpu_quota:
        out.cpu.quota.value = res.cpu_quota
    if res.cpu_period:
        out.cpu.period.value = res.cpu_period
    out.cpu.cpus, out.cpu.mems = res.cpuset_cpus, res.cpuset_mems
    for limit in res.hugepage_limits:
        out.hugepage_limits.add(page_size=limit.page_size, limit=limit.limit)
    for key, value in res.unified.items():
        out.unified[key] = value
    return out


def cri_resources(res: Any, base: cri.LinuxContainerResources | None = None) -> cri.LinuxContainerResources:
    """NRI resources as CRI's, on top of `base` (what is not set in `res` stays as it was). A pids limit goes
    to cgroup v2's pids.max (CRI has no field of its own for it)."""
    out = cri.LinuxContainerResources()
    if base is not None:
        out.CopyFrom(base)
    if res.memory.HasField("limit"):
        out.memory_limit_in_bytes = res.memory.limit.value
    if res.memory.HasField("swap"):
        out.memory_swap_limit_in_bytes = res.memory.swap.value
    for name, attr in (("shares", "cpu_shares"), ("quota", "cpu_quota"), ("period", "cpu_period")):
        if res.cpu.HasField(name):
            setattr(out, attr, getattr(res.cpu, name).value)
    if res.cpu.cpus:
        out.cpuset_cpus = res.cpu.cpus
    if res.cpu.mems:
        out.cpuset_mems = res.cpu.mems
    if res.hugepage_limits:
        sizes = {limit.page_size for limit in res.hugepage_limits}
        kept = [cri.HugepageLimit(page_size=limit.page_size, limit=limit.limit) for limit in out.hugepage_limits
                if limit.page_size not in sizes]
        del out.hugepage_limits[:]
        out.hugepage_limits.extend([*kept, *(cri.HugepageLimit(page_size=limit.page_size, limit=limit.limit)
                                             for limit in res.hugepage_limits)])
    for key, value in res.unified.items():
        out.unified[key] = value
    if res.HasField("pids"):
        out.unified["pids.max"] = str(res.pids.limit) if res.pids.limit > 0 else "max"
    return out
