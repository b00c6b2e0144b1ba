"""Edits of an OCI runtime spec document (config.json as a dict) that CDI injection and NRI adjustments share:
environment variables by name, devices by path (with the device-filter rule that lets the container use one),
mounts by destination (ordered parents first), hooks, rlimits by type; and the limits of an update, for a container
not made yet (cri/lifecycle/limits.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_ACCESS = "rwm"


def set_env(spec: dict[str, Any], name: str, value: str | None) -> None:
    """Set `name` (replacing it in place, else appended) or, with value None, remove it."""
    env = spec.setdefault("process", {}).setdefault("env", [])
    entry = f"{name}={value}"
    kept, placed = [], False
    for item in env:
        if item.partition("=")[0] != name:
            kept.append(item)
        elif value is not None and not placed:
            kept.append(entry)
            placed = True
    if value is not None and not placed:
        kept.append(entry)
    env[:] = kept


def remove_device(spec: dict[str, Any], path: str) -> None:
    linux = spec.setdefault("linux", {})
    linux["devices"] = [d for d in linux.get("devices", []) if d.get("path") != path]


def add_device(spec: dict[str, Any], device: dict[str, Any], access: str = DEFAULT_ACCESS) -> None:
    """Add (or replace, by path) a device node; a block or char device also gets an allow rule for its numbers
    with `access` (empty: the node exists but may not be used)."""
    remove_device(spec, device["path"])
    spec["linux"]["devices"].append(device)
    if device.get("type") in ("b", "c", "u"):
        rule = {"allow": True, "type": "c" if device["type"] == "u" else device["type"],
                "major": device.get("major", 0), "minor": device.get("minor", 0), "access": access}
        spec["linux"].setdefault("resources", {}).setdefault("devices", []).append(rule)


def remove_mount(spec: dict[str, Any], destination: str) -> None:
    spec["mounts"] = [m for m in spec.get("mounts", []) if m.get("destination") != destination]


def add_mount(spec: dict[str, Any], destination: str, source: str, type: str = "",
              options: Sequence[str] = ()) -> None:
    """Add (or replace, by destination) a mount; call `order_mounts` after the last one."""
    mount: dict[str, Any] = {"destination": destination, "source": source}
    if type:
        mount["type"] = type
    if options:
        mount["options"] = list(options)
    remove_mount(spec, destination)
    spec["mounts"].append(mount)


def _depth(mount: dict[str, Any]) -> int:
    return len([part for part in str(mount.get("destination", "")).split("/") if part])


def order_mounts(spec: dict[str, Any]) -> None:
    """Mounts by the depth of their destination, stably: a mount is made after the one it lands in."""
    spec.setdefault("mounts", []).sort(key=_depth)


def add_hook(spec: dict[str, Any], kind: str, path: str, args: Sequence[str] = (), env: Sequence[str] = (),
             timeout: int | None = None) -> None:
    """Append a hook to those of `kind` (prestart, createRuntime, ..., poststop)."""
    hook: dict[str, Any] = {"path": path}
    if args:
        hook["args"] = list(args)
    if env:
        hook["env"] = list(env)
    if timeout is not None:
        hook["timeout"] = timeout
    spec.setdefault("hooks", {}).setdefault(kind, []).append(hook)


def update_resources(spec: dict[str, Any], resources: dict[str, Any]) -> None:
    """New limits (an OCI `linux.resources` without devices, as `runc update --resources` takes) into the spec, as
    an update changes a live container's: a limit given replaces the spec's, one not given stays."""
    current = spec.setdefault("linux", {}).setdefault("resources", {})
    for key, value in resources.items():
        if isinstance(value, dict) and isinstance(current.get(key), dict):
            current[key] = {**current[key], **value}
        else:
            current[key] = value


def set_rlimit(spec: dict[str, Any], rlimit_type: str, hard: int, soft: int) -> None:
    rlimits = spec.setdefault("process", {}).setdefault("rlimits", [])
    rlimits[:] = [r for r in rlimits if r.get("type") != rlimit_type]
    rlimits.append({"type": rlimit_type, "hard": hard, "soft": soft})
