"""Applying resolved CDI edits to a container's OCI spec (a config.json document), as CDI's reference
implementation does: env (replacing a variable of the same name), device nodes (type, numbers and mode read from
the host's node when the spec leaves them out; owner from the process's user when it is not root; an allow rule
in `linux.resources.devices`, so the device filter lets the container use it), mounts (replacing one at the same
place; then all mounts ordered by depth, stably), hooks, additional gids. Edits crisp cannot apply (Intel RDT, net
devices) fail with the device named, never silently."""

from __future__ import annotations

import os
import stat
from typing import Any

from runtime import errors, ociedit
from runtime.cdi.registry import Resolved
from runtime.cdi.spec import ContainerEdits, DeviceNode

_TYPES = {stat.S_IFBLK: "b", stat.S_IFCHR: "c", stat.S_IFIFO: "p"}


def _fill(node: DeviceNode, source: str) -> dict[str, Any]:
    """The OCI device of a CDI device node, with what the spec leaves out read from the host's node."""
    host = node.host_path or node.path
    minimal = bool(node.type) and (node.major != 0 or node.type == "p")
    device: dict[str, Any] = {"path": node.path, "type": node.type, "major": node.major, "minor": node.minor}
    mode = node.file_mode
    try:
        st = os.lstat(host)
        host_type = _TYPES.get(stat.S_IFMT(st.st_mode))
        if host_type is None:
            raise errors.InvalidArgument(f"{source}: host path {host} is not a device node")
    except OSError as exc:
        if not minimal:
            raise errors.InvalidArgument(f"{source}: cannot stat host device {host}: {exc.strerror}") from None
    else:
        if mode is None:
            mode = stat.S_IMODE(st.st_mode)
        if not minimal:
            wanted = {"u": "c"}.get(node.type, node.type) or host_type
            if wanted != host_type:
                raise errors.InvalidArgument(f"{source}: device {node.path} is of type {node.type} but {host} is "
                                             f"{host_type}")
            device["type"] = node.type or host_type
            if host_type != "p" and node.major == 0:
                device["major"], device["minor"] = os.major(st.st_rdev), os.minor(st.st_rdev)
    if mode is not None:
        device["fileMode"] = mode
    if node.uid is not None:
        device["uid"] = node.uid
    if node.gid is not None:
        device["gid"] = node.gid
    return device


def _apply(spec: dict[str, Any], edits: ContainerEdits, source: str) -> None:
    if edits.intel_rdt is not None:
        raise errors.InvalidArgument(f"{source}: intelRdt edits are not supported by crisp")
    if edits.net_devices:
        raise errors.InvalidArgument(f"{source}: netDevices edits are not supported by crisp")
    for entry in edits.env:
        name, _, value = entry.partition("=")
        ociedit.set_env(spec, name, value)
    user = spec.setdefault("process", {}).setdefault("user", {})
    for node in edits.device_nodes:
        device = _fill(node, source)
        if "uid" not in device and user.get("uid", 0) > 0:
            device["uid"] = user["uid"]
        if "gid" not in device and user.get("gid", 0) > 0:
            device["gid"] = user["gid"]
        ociedit.add_device(spec, device, {"": ociedit.DEFAULT_ACCESS, "none": ""}.get(node.permissions,
                                                                                    node.permissions))
    if edits.mounts:
        for m in edits.mounts:
            ociedit.add_mount(spec, m.container_path, m.host_path, m.type, m.options)
        ociedit.order_mounts(spec)
    for hook in edits.hooks:
        ociedit.add_hook(spec, hook.hook_name, hook.path, hook.args, hook.env, hook.timeout)
    gids = user.setdefault("additionalGids", [])
    for gid in edits.additional_gids:
        if gid and gid not in gids:
            gids.append(gid)


def inject(spec: dict[str, Any], resolved: Resolved) -> None:
    """Apply the edits in order; on an error the spec may be half-edited (callers throw it away)."""
    for edits, source in zip(resolved.edits, resolved.sources, strict=True):
        _apply(spec, edits, source)
