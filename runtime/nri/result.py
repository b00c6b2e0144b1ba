"""Merging what several plugins answer to one CreateContainer (adjustments) or UpdateContainer/StopContainer
(updates of containers' resources) into one result, with NRI's ownership rule: each field of a container (or each
entry of a keyed field: an annotation, a mount destination, an env name, a device path, a sysctl, an rlimit type,
a hugepage size, a unified key, a CDI device) may be set by one plugin only. A second plugin setting it is a
conflict and fails the request, naming both plugins and the field. A key prefixed with `-` removes the entry (from
the container's config, or from what an earlier plugin added) and gives it up; the remover may then set it again.

Plugins are consulted in index order and each sees the container as the earlier ones left it (`container`).
Hooks accumulate (every plugin may add some) and so do device cgroup rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime import errors
from runtime.nri import api, schema

_F = {name: number for number, name in enumerate(schema.FIELDS)}
_MEMORY = (("limit", "MemLimit"), ("reservation", "MemReservation"), ("swap", "MemSwapLimit"),
           ("kernel", "MemKernelLimit"), ("kernel_tcp", "MemTCPLimit"), ("swappiness", "MemSwappiness"),
           ("disable_oom_killer", "MemDisableOomKiller"), ("use_hierarchy", "MemUseHierarchy"))
_CPU = (("shares", "CPUShares"), ("quota", "CPUQuota"), ("period", "CPUPeriod"),
        ("realtime_runtime", "CPURealtimeRuntime"), ("realtime_period", "CPURealtimePeriod"))
_LINUX_SIMPLE = (("io_priority", "IoPriority"), ("seccomp_policy", "SeccompPolicy"), ("scheduler", "LinuxSched"),
                 ("memory_policy", "MemoryPolicy"), ("rdt", "RdtClosID"))
_HOOK_LISTS = ("prestart", "create_runtime", "create_container", "start_container", "poststart", "poststop")


class Conflict(errors.FailedPrecondition):
    """Two plugins set the same field of a container."""


def removal(key: str) -> tuple[str, bool]:
    return (key[1:], True) if key.startswith("-") else (key, False)


class Owners:
    """Who set what, per container: (container id, field, key or "") -> plugin, "-plugin" once cleared."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, int, str], str] = {}

    def claim(self, cid: str, field: str, plugin: str, key: str = "") -> None:
        slot = (cid, _F[field], key)
        other = self.entries.get(slot)
        if other is not None:
            other, cleared = removal(other)
            if not (cleared and other == plugin):
                what = f"{field} {key!r}" if key else field
                raise Conflict(f"plugins {plugin!r} and {other!r} both tried to set {what} of container {cid}")
        self.entries[slot] = plugin

    def clear(self, cid: str, field: str, plugin: str, key: str = "") -> None:
        self.entries[(cid, _F[field], key)] = "-" + plugin

    def accumulate(self, cid: str, field: str, plugin: str) -> None:
        slot = (cid, _F[field], "")
        self.entries[slot] = f"{self.entries[slot]},{plugin}" if slot in self.entries else plugin

    def to_proto(self) -> Any:
        owning = api.OwningPlugins()
        for (cid, field, key), plugin in self.entries.items():
            owners = owning.owners[cid]
            if key:
                owners.compound[field].owners[key] = plugin
            else:
                owners.simple[field] = plugin
        return owning


def _merge_resources(owners: Owners, cid: str, plugin: str, src: Any, dst: Any, view: Any | None) -> None:
    """Claim and copy every resource `src` sets into `dst` (and the plugins' view of the container)."""
    targets = [t for t in (dst, view) if t is not None]
    for attr, field in _MEMORY:
        if src.memory.HasField(attr):
            owners.claim(cid, field, plugin)
            for t in targets:
                getattr(t.memory, attr).value = getattr(src.memory, attr).value
    for attr, field in _CPU:
        if src.cpu.HasField(attr):
            owners.claim(cid, field, plugin)
            for t in targets:
                getattr(t.cpu, attr).value = getattr(src.cpu, attr).value
    for attr, field in (("cpus", "CPUSetCPUs"), ("mems", "CPUSetMems")):
        if getattr(src.cpu, attr):
            owners.claim(cid, field, plugin)
            for t in targets:
                setattr(t.cpu, attr, getattr(src.cpu, attr))
    for limit in src.hugepage_limits:
        owners.claim(cid, "HugepageLimits", plugin, limit.page_size)
        for t in targets:
            t.hugepage_limits.append(limit)
    for key, value in src.unified.items():
        owners.claim(cid, "CgroupsUnified", plugin, key)
        for t in targets:
            t.unified[key] = value
    for attr, field in (("blockio_class", "BlockioClass"), ("rdt_class", "RdtClass"), ("pids", "PidsLimit")):
        if src.HasField(attr):
            owners.claim(cid, field, plugin)
            for t in targets:
                getattr(t, attr).CopyFrom(getattr(src, attr))
    for rule in src.devices:
        for t in targets:
            t.devices.append(rule)


class CreateResult:
    """The merged answer of the plugins to one CreateContainer."""

    def __init__(self, request: Any) -> None:
        self.container = request.container  # what the next plugin is shown
        self.cid = request.container.id
        self.adjust = api.ContainerAdjustment()
        self.owners = Owners()
        self.updates = UpdateSet(self.owners)

    def apply(self, response: Any, plugin: str) -> None:
        if response is None:
            return
        if response.HasField("adjust"):
            self._adjust(response.adjust, plugin)
        self.updates.add(response.update, plugin)
        if response.evict:
            raise errors.Unimplemented(f"plugin {plugin}: container eviction is not supported")

    def response(self) -> Any:
        return api.CreateContainerResponse(adjust=self.adjust, update=self.updates.merged())

    def _keyed(self, field: str, plugin: str, items: list[tuple[str, Any]], current: dict[str, Any],
               merged: dict[str, Any]) -> None:
        """Annotations, sysctls, net devices (maps) and mounts, env, devices (lists keyed by one string)."""
        for key, item in items:
            name, removed = removal(key)
            if removed:
                self.owners.clear(self.cid, field, plugin, name)
                current.pop(name, None)
                merged.pop(name, None)
                merged[key] = item
            else:
                self.owners.claim(self.cid, field, plugin, name)
                merged.pop("-" + name, None)
                current[name] = merged[name] = item

    def _adjust(self, adj: Any, plugin: str) -> None:
        c, cid, out = self.container, self.cid, self.adjust
        annotations = dict(out.annotations)
        view = dict(c.annotations)
        self._keyed("Annotations", plugin, list(adj.annotations.items()), view, annotations)
        _set_map(out.annotations, annotations)
        _set_map(c.annotations, view)
        self._adjust_list("Mounts", plugin, adj.mounts, c.mounts, out.mounts, _mount_key)
        self._adjust_list("Env", plugin, adj.env, c.env, out.env, _env_key)
        self._adjust_list("Devices", plugin, adj.linux.devices, c.linux.devices, out.linux.devices, _device_key)
        if adj.args:
            args = list(adj.args)
            if args[0] == "":
                self.owners.clear(cid, "Args", plugin)
                args = args[1:]
            self.owners.claim(cid, "Args", plugin)
            out.args[:] = args
            c.args[:] = args
        if any(getattr(adj.hooks, name) for name in _HOOK_LISTS):
            for name in _HOOK_LISTS:
                getattr(out.hooks, name).extend(getattr(adj.hooks, name))
                getattr(c.hooks, name).extend(getattr(adj.hooks, name))
            self.owners.accumulate(cid, "OciHooks", plugin)
        if adj.HasField("linux"):
            self._adjust_linux(adj.linux, plugin)
        for rlimit in adj.rlimits:
            self.owners.claim(cid, "Rlimits", plugin, rlimit.type)
            out.rlimits.append(rlimit)
            c.rlimits.append(rlimit)
        for device in adj.CDI_devices:
            self.owners.claim(cid, "CdiDevices", plugin, device.name)
            out.CDI_devices.append(device)

    def _adjust_list(self, field: str, plugin: str, src: Any, cur: Any, dst: Any, key_of: Callable[[Any], str]
                     ) -> None:
        """Mounts (by destination), env (by name; the container's view holds `K=V` strings), devices (by path)."""
        if not src:
            return
        merged = {key_of(item): _copy(item) for item in dst}
        current = {key_of(item): _copy(item) for item in cur}
        self._keyed(field, plugin, [(key_of(item), _copy(item)) for item in src], current, merged)
        del dst[:]
        dst.extend(merged.values())
        del cur[:]
        cur.extend(_env_entry(item) if field == "Env" and not isinstance(item, str) else item
                   for item in current.values())

    def _adjust_linux(self, lin: Any, plugin: str) -> None:
        c, cid, out = self.container, self.cid, self.adjust.linux
        if lin.HasField("resources"):
            _merge_resources(self.owners, cid, plugin, lin.resources, out.resources, c.linux.resources)
        if lin.cgroups_path:
            self.owners.claim(cid, "CgroupsPath", plugin)
            out.cgroups_path = c.linux.cgroups_path = lin.cgroups_path
        if lin.HasField("oom_score_adj"):
            self.owners.claim(cid, "OomScoreAdj", plugin)
            out.oom_score_adj.CopyFrom(lin.oom_score_adj)
            c.linux.oom_score_adj.CopyFrom(lin.oom_score_adj)
        for attr, field in _LINUX_SIMPLE:
            if lin.HasField(attr):
                self.owners.claim(cid, field, plugin)
                getattr(out, attr).CopyFrom(getattr(lin, attr))
        for ns in lin.namespaces:
            self.owners.claim(cid, "Namespace", plugin, removal(ns.type)[0])
            out.namespaces.append(ns)
        for field, src, dst, view in (("Sysctl", lin.sysctl, out.sysctl, c.linux.sysctl),
                                      ("LinuxNetDevices", lin.net_devices, out.net_devices, None)):
            if not src:
                continue
            merged = {k: dst[k] for k in dst}
            current = {k: view[k] for k in view} if view is not None else {}
            self._keyed(field, plugin, list(src.items()), current, merged)
            _set_map(dst, merged)
            if view is not None:
                _set_map(view, current)


def _set_map(target: Any, values: dict[str, Any]) -> None:
    target.clear()
    for key, value in values.items():
        if isinstance(value, str):
            target[key] = value
        else:
            target[key].CopyFrom(value)


def _mount_key(mount: Any) -> str:
    return str(mount.destination)


def _env_key(entry: Any) -> str:
    return entry.partition("=")[0] if isinstance(entry, str) else str(entry.key)


def _device_key(device: Any) -> str:
    return str(device.path)


def _copy(item: Any) -> Any:
    if isinstance(item, str):
        return item
    clone = type(item)()
    clone.CopyFrom(item)
    return clone


def _env_entry(kv: Any) -> str:
    return f"{kv.key}={kv.value}"


class UpdateSet:
    """Resource updates plugins ask for other containers (or, in UpdateContainer, for the one being updated),
    merged per container under the same ownership rule. A failing update marked `ignore_failure` is dropped."""

    def __init__(self, owners: Owners | None = None, requested: Any | None = None) -> None:
        self.owners = owners or Owners()
        self.by_container: dict[str, Any] = {}
        if requested is not None:  # UpdateContainer: the CRI request's resources, which plugins may amend
            self.by_container[requested.container_id] = requested

    def add(self, updates: Any, plugin: str) -> None:
        for update in updates:
            merged = self.by_container.get(update.container_id)
            candidate = api.ContainerUpdate()
            if merged is not None:
                candidate.CopyFrom(merged)
            else:
                candidate.container_id = update.container_id
            candidate.ignore_failure = candidate.ignore_failure or update.ignore_failure
            saved = dict(self.owners.entries)
            try:
                _merge_resources(self.owners, update.container_id, plugin, update.linux.resources,
                                 candidate.linux.resources, None)
            except Conflict:
                self.owners.entries = saved
                if update.ignore_failure:
                    continue
                raise
            self.by_container[update.container_id] = candidate

    def merged(self) -> list[Any]:
        return list(self.by_container.values())
