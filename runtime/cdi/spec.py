"""A CDI spec file (JSON or YAML) parsed and checked as the CDI spec says: strict (an unknown field is an error),
`cdiVersion` one of the released versions and at least the one the fields used need, a valid kind, at least one
device, device names unique in the file, every device with some edits, and valid edits.

Spec versions: 0.1.0 to CURRENT_VERSION (1.1.0). Version gates (CDI's table): mount `type` 0.4.0; device-node
`hostPath` and device names starting with a digit 0.5.0; annotations and dots in the class 0.6.0; `intelRdt` and
`additionalGids` 0.7.0; `netDevices` and intelRdt `schemata`/`enableMonitoring` 1.1.0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.cdi import names

VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")
CURRENT_VERSION = VERSIONS[-1]
HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")


class SpecError(errors.InvalidArgument):
    """A CDI spec file that cannot be used."""


@dataclass(frozen=True)
class DeviceNode:
    path: str
    host_path: str = ""
    type: str = ""
    major: int = 0
    minor: int = 0
    file_mode: int | None = None
    permissions: str = ""
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class Mount:
    host_path: str
    container_path: str
    options: tuple[str, ...] = ()
    type: str = ""


@dataclass(frozen=True)
class Hook:
    hook_name: str
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


@dataclass(frozen=True)
class ContainerEdits:
    env: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    hooks: tuple[Hook, ...] = ()
    mounts: tuple[Mount, ...] = ()
    additional_gids: tuple[int, ...] = ()
    intel_rdt: Mapping[str, Any] | None = None
    net_devices: tuple[Mapping[str, str], ...] = ()

    def empty(self) -> bool:
        return not (self.env or self.device_nodes or self.hooks or self.mounts or self.additional_gids
                    or self.intel_rdt is not None or self.net_devices)


@dataclass(frozen=True)
class Device:
    name: str
    edits: ContainerEdits
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Spec:
    path: Path
    version: str
    vendor: str
    cls: str
    devices: Mapping[str, Device]
    edits: ContainerEdits
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return f"{self.vendor}/{self.cls}"


class _Reader:
    """Strict access to one JSON object: every key read or an error naming the unknown ones."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise SpecError(f"{where}: expected an object")
        self.data, self.where, self.seen = data, where, set[str]()

    def get(self, key: str, kind: type | tuple[type, ...], required: bool = False) -> Any:
        self.seen.add(key)
        value = self.data.get(key)
        if value is None:
            if required:
                raise SpecError(f"{self.where}.{key}: missing")
            return None
        if (isinstance(value, bool) and kind is int) or not isinstance(value, kind):
            raise SpecError(f"{self.where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        values = self.get(key, list) or []
        if not all(isinstance(v, str) for v in values):
            raise SpecError(f"{self.where}.{key}: expected strings")
        return tuple(values)

    def mapping(self, key: str) -> dict[str, str]:
        values = self.get(key, dict) or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
            raise SpecError(f"{self.where}.{key}: expected string keys and values")
        return dict(values)

    def done(self) -> None:
        unknown = set(self.data) - self.seen
        if unknown:
            raise SpecError(f"{self.where}: unknown field(s) {', '.join(sorted(unknown))}")


def _env(values: tuple[str, ...], where: str) -> tuple[str, ...]:
    for value in values:
        if value.find("=") <= 0:
            raise SpecError(f"{where}: invalid environment variable {value!r}")
    return values


def _device_node(data: object, where: str) -> DeviceNode:
    r = _Reader(data, where)
    node = DeviceNode(path=r.get("path", str, True), host_path=r.get("hostPath", str) or "",
                      type=r.get("type", str) or "", major=r.get("major", int) or 0, minor=r.get("minor", int) or 0,
                      file_mode=r.get("fileMode", int), permissions=r.get("permissions", str) or "",
                      uid=r.get("uid", int), gid=r.get("gid", int))
    r.done()
    if node.type not in ("", "b", "c", "u", "p"):
        raise SpecError(f"{where}: device {node.path!r}: invalid type {node.type!r}")
    if node.permissions not in ("", "none") and node.permissions.strip("rwm"):
        raise SpecError(f"{where}: device {node.path!r}: invalid permissions {node.permissions!r}")
    return node


def _edits(data: object, where: str) -> ContainerEdits:
    if data is None:
        return ContainerEdits()
    r = _Reader(data, where)
    nodes = tuple(_device_node(d, f"{where}.deviceNodes[{i}]") for i, d in enumerate(r.get("deviceNodes", list) or []))
    mounts, hooks, net_devices = [], [], []
    for i, m in enumerate(r.get("mounts", list) or []):
        mr = _Reader(m, f"{where}.mounts[{i}]")
        mounts.append(Mount(mr.get("hostPath", str, True), mr.get("containerPath", str, True), mr.strings("options"),
                            mr.get("type", str) or ""))
        mr.done()
    for i, h in enumerate(r.get("hooks", list) or []):
        hr = _Reader(h, f"{where}.hooks[{i}]")
        hook = Hook(hr.get("hookName", str, True), hr.get("path", str, True), hr.strings("args"),
                    _env(hr.strings("env"), f"{where}.hooks[{i}].env"), hr.get("timeout", int))
        hr.done()
        if hook.hook_name not in HOOK_NAMES:
            raise SpecError(f"{where}.hooks[{i}]: invalid hook name {hook.hook_name!r}")
        hooks.append(hook)
    for i, n in enumerate(r.get("netDevices", list) or []):
        nr = _Reader(n, f"{where}.netDevices[{i}]")
        net_devices.append({"hostInterfaceName": nr.get("hostInterfaceName", str, True),
                            "name": nr.get("name", str, True)})
        nr.done()
    gids = r.get("additionalGids", list) or []
    if not all(isinstance(g, int) and not isinstance(g, bool) and 0 <= g < 2**32 for g in gids):
        raise SpecError(f"{where}.additionalGids: expected unsigned 32-bit integers")
    rdt = r.get("intelRdt", dict)
    edits = ContainerEdits(env=_env(r.strings("env"), f"{where}.env"), device_nodes=nodes, hooks=tuple(hooks),
                           mounts=tuple(mounts), additional_gids=tuple(gids), intel_rdt=rdt,
                           net_devices=tuple(net_devices))
    r.done()
    return edits


def _required_version(spec: Spec, raw_devices: list[str]) -> str:
    edits = [spec.edits, *(d.edits for d in spec.devices.values())]
    rdt_new = any(e.intel_rdt and ("schemata" in e.intel_rdt or e.intel_rdt.get("enableMonitoring")) for e in edits)
    if rdt_new or any(e.net_devices for e in edits):
        return "1.1.0"
    if any(e.intel_rdt is not None or e.additional_gids for e in edits):
        return "0.7.0"
    if spec.annotations or any(d.annotations for d in spec.devices.values()) or "." in spec.cls:
        return "0.6.0"
    if any(n[:1].isdigit() for n in raw_devices) or any(node.host_path for e in edits for node in e.device_nodes):
        return "0.5.0"
    if any(m.type for e in edits for m in e.mounts):
        return "0.4.0"
    return "0.3.0"


def parse_spec(data: object, path: Path) -> Spec:
    r = _Reader(data, str(path))
    version = (r.get("cdiVersion", str, True)).removeprefix("v")
    if version not in VERSIONS:
        raise SpecError(f"{path}: unknown cdiVersion {version!r} (known: {', '.join(VERSIONS)})")
    vendor, cls = names.parse_kind(r.get("kind", str, True))
    devices: dict[str, Device] = {}
    raw_names = []
    for i, d in enumerate(r.get("devices", list) or []):
        dr = _Reader(d, f"{path}: devices[{i}]")
        name = dr.get("name", str, True)
        names.check_device_name(name)
        edits = _edits(dr.get("containerEdits", dict), f"{path}: device {name}")
        device = Device(name, edits, dr.mapping("annotations"))
        dr.done()
        if device.edits.empty():
            raise SpecError(f"{path}: device {name!r} has no container edits")
        if name in devices:
            raise SpecError(f"{path}: device {name!r} is defined more than once")
        devices[name] = device
        raw_names.append(name)
    if not devices:
        raise SpecError(f"{path}: no devices")
    spec = Spec(path, version, vendor, cls, devices, _edits(r.get("containerEdits", dict), f"{path}: containerEdits"),
                r.mapping("annotations"))
    r.done()
    required = _required_version(spec, raw_names)
    if VERSIONS.index(version) < VERSIONS.index(required):
        raise SpecError(f"{path}: the fields used need cdiVersion {required} or later, it says {version}")
    return spec


def read_spec(path: Path) -> Spec:
    """A spec file: `.json` is JSON, `.yaml` is YAML (of which JSON is a subset)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SpecError(f"{path}: cannot parse: {exc}") from None
        return parse_spec(data, path)
    # PyYAML is loaded by the first .yaml spec, not with crispd (whose RSS it grew by ~0.9 MB on nodes with no CDI)
    import yaml

    try:
        data = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: cannot parse: {exc}") from None
    return parse_spec(data, path)
