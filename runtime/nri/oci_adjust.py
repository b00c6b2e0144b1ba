"""Applying the plugins' merged ContainerAdjustment to the container's OCI spec, as NRI's runtime-tools generator
does: annotations, env and devices and mounts with `-` removals, args, hooks appended, resources, oom_score_adj,
cgroups path, sysctls, rlimits (by type). What crisp cannot carry out is refused, naming the field: a container
never runs without something a plugin asked for. CDI devices are returned for the caller to resolve and inject.
"""

from __future__ import annotations

from typing import Any

from runtime import errors, ociedit
from runtime.nri.result import removal

# adjustable fields crisp has no way to apply: (message field path, what to say)
_UNSUPPORTED = (
    ("linux.io_priority", "the I/O priority"), ("linux.seccomp_policy", "a seccomp policy"),
    ("linux.scheduler", "the scheduling policy"), ("linux.rdt", "Intel RDT"),
    ("linux.memory_policy", "the NUMA memory policy"),
    ("linux.resources.blockio_class", "a block I/O class"), ("linux.resources.rdt_class", "an RDT class"),
    ("linux.resources.memory.kernel", "a kernel memory limit (cgroup v1 only)"),
    ("linux.resources.memory.kernel_tcp", "a kernel TCP memory limit (cgroup v1 only)"),
    ("linux.resources.memory.swappiness", "memory swappiness (cgroup v1 only)"),
    ("linux.resources.memory.disable_oom_killer", "disabling the OOM killer (cgroup v1 only)"),
    ("linux.resources.memory.use_hierarchy", "memory use_hierarchy (cgroup v1 only)"),
    ("linux.resources.cpu.realtime_runtime", "a realtime CPU runtime (cgroup v1 only)"),
    ("linux.resources.cpu.realtime_period", "a realtime CPU period (cgroup v1 only)"),
)


def _has(message: Any, path: str) -> bool:
    *parents, leaf = path.split(".")
    for name in parents:
        if not message.HasField(name):
            return False
        message = getattr(message, name)
    return bool(message.HasField(leaf))


def check_supported(adjust: Any) -> None:
    for path, what in _UNSUPPORTED:
        if _has(adjust, path):
            raise errors.InvalidArgument(f"NRI adjustment of {path} ({what}) is not supported by crisp")
    if adjust.linux.namespaces:
        raise errors.InvalidArgument("NRI adjustment of linux.namespaces is not supported by crisp")
    if adjust.linux.net_devices:
        raise errors.InvalidArgument("NRI adjustment of linux.net_devices is not supported by crisp")


def _resources(spec: dict[str, Any], res: Any) -> None:
    target = spec.setdefault("linux", {}).setdefault("resources", {})
    if res.HasField("memory"):
        memory = target.setdefault("memory", {})
        if res.memory.HasField("limit"):
            memory["limit"] = res.memory.limit.value
            memory["swap"] = res.memory.limit.value  # as NRI's generator: no swap unless asked for
        if res.memory.HasField("swap"):
            memory["swap"] = res.memory.swap.value
        if res.memory.HasField("reservation"):
            memory["reservation"] = res.memory.reservation.value
    if res.HasField("cpu"):
        cpu = target.setdefault("cpu", {})
        for name, key in (("shares", "shares"), ("quota", "quota"), ("period", "period")):
            if res.cpu.HasField(name):
                cpu[key] = getattr(res.cpu, name).value
        if res.cpu.cpus:
            cpu["cpus"] = res.cpu.cpus
        if res.cpu.mems:
            cpu["mems"] = res.cpu.mems
    for limit in res.hugepage_limits:
        limits = target.setdefault("hugepageLimits", [])
        limits[:] = [x for x in limits if x.get("pageSize") != limit.page_size]
        limits.append({"pageSize": limit.page_size, "limit": limit.limit})
    for key, value in res.unified.items():
        target.setdefault("unified", {})[key] = value
    if res.HasField("pids"):
        target["pids"] = {"limit": res.pids.limit}
    for rule in res.devices:
        entry: dict[str, Any] = {"allow": rule.allow, "access": rule.access}
        if rule.type:
            entry["type"] = rule.type
        if rule.HasField("major"):
            entry["major"] = rule.major.value
        if rule.HasField("minor"):
            entry["minor"] = rule.minor.value
        target.setdefault("devices", []).append(entry)


def apply_adjustment(spec: dict[str, Any], adjust: Any) -> list[str]:
    """Edit `spec` in place; returns the CDI devices to inject. InvalidArgument for what crisp cannot apply."""
    check_supported(adjust)
    annotations = spec.setdefault("annotations", {})
    for key, value in adjust.annotations.items():
        name, removed = removal(key)
        if removed:
            annotations.pop(name, None)
        else:
            annotations[name] = value
    for kv in adjust.env:
        name, removed = removal(kv.key)
        ociedit.set_env(spec, name, None if removed else kv.value)
    if adjust.args:
        spec.setdefault("process", {})["args"] = list(adjust.args)
    for kind, field in (("prestart", "prestart"), ("createRuntime", "create_runtime"),
                        ("createContainer", "create_container"), ("startContainer", "start_container"),
                        ("poststart", "poststart"), ("poststop", "poststop")):
        for hook in getattr(adjust.hooks, field):
            ociedit.add_hook(spec, kind, hook.path, hook.args, hook.env,
                             hook.timeout.value if hook.HasField("timeout") else None)
    for device in adjust.linux.devices:
        path, removed = removal(device.path)
        if removed:
            ociedit.remove_device(spec, path)
            continue
        oci: dict[str, Any] = {"path": path, "type": device.type, "major": device.major, "minor": device.minor}
        for name, key in (("file_mode", "fileMode"), ("uid", "uid"), ("gid", "gid")):
            if device.HasField(name):
                oci[key] = getattr(device, name).value
        ociedit.add_device(spec, oci)
    if adjust.linux.cgroups_path:
        spec.setdefault("linux", {})["cgroupsPath"] = adjust.linux.cgroups_path
    if adjust.linux.HasField("oom_score_adj"):
        spec.setdefault("process", {})["oomScoreAdj"] = adjust.linux.oom_score_adj.value
    for key, value in adjust.linux.sysctl.items():
        name, removed = removal(key)
        sysctls = spec.setdefault("linux", {}).setdefault("sysctl", {})
        if removed:
            sysctls.pop(name, None)
        else:
            sysctls[name] = value
    if adjust.linux.HasField("resources"):
        _resources(spec, adjust.linux.resources)
    if adjust.mounts:
        for mount in adjust.mounts:
            destination, removed = removal(mount.destination)
            if removed:
                ociedit.remove_mount(spec, destination)
                continue
            ociedit.add_mount(spec, destination, mount.source, mount.type, mount.options)
        ociedit.order_mounts(spec)
    for rlimit in adjust.rlimits:
        ociedit.set_rlimit(spec, rlimit.type, rlimit.hard, rlimit.soft)
    return [device.name for device in adjust.CDI_devices]
