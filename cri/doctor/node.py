"""The node around crispd: its socket, its runtime handlers, the disk of its dirs, and a running crispd's answer."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from cri import api as cri
from cri.doctor.report import Check, fail, ok, warn
from runtime import errors
from runtime.executor.handlers import resolve_handler

if TYPE_CHECKING:
    from cri.config import Config

GiB = 1 << 30
MiB = 1 << 20
RPC_TIMEOUT = 10.0


def check_socket(config: Config) -> Check:
    path = Path(config.listen)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return ok("socket", f"{path} does not exist yet (crispd makes it 0660, root's)")
    if not stat.S_ISSOCK(st.st_mode):
        return fail("socket", f"{path} is not a socket: crispd refuses to replace it", f"remove {path}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        return warn("socket", f"{path} is {mode:04o}: anyone on the node may drive crispd, as root",
                    f"chmod 0660 {path} (crispd makes it so)")
    return ok("socket", f"{path} is {mode:04o}, owner {st.st_uid}, group {st.st_gid}")


def check_handlers(config: Config) -> Check:
    found, missing = [], []
    for name in ["", *sorted(config.runtime.handlers)]:
        try:
            handler = resolve_handler(name, config.runtime.handlers, Path(config.state))
        except errors.CrispError as exc:
            missing.append(str(exc))
            continue
        program = handler.argv[0] if handler.kind == "oci" else "built in"
        found.append(f"{name or 'default'} ({handler.kind}: {program})")
    if missing:
        return warn("runtime handlers", f"found {', '.join(found)}; " + "; ".join(missing),
                    "install the runtime, or remove its [runtime.handlers] entry: pods of that RuntimeClass fail")
    return ok("runtime handlers", ", ".join(found))


def _existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists())


def check_disk(config: Config) -> list[Check]:
    checks = []
    for what, directory in (("root dir", config.root), ("state dir", config.state)):
        where = _existing(Path(directory))
        st = os.statvfs(where)
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        inodes_free = st.f_favail if st.f_files else None
        found = f"{directory}: {free / GiB:.1f} GiB free of {total / GiB:.1f} GiB"
        if free < 256 * MiB or (inodes_free is not None and inodes_free < 1000):
            checks.append(fail(f"disk ({what})", found + (f", {inodes_free} inodes" if inodes_free else ""),
                               "free space there: images, layers and logs need it"))
        elif free < 2 * GiB or (total and free < total * 0.05):
            checks.append(warn(f"disk ({what})", found, "free space there before images and logs fill it"))
        else:
            checks.append(ok(f"disk ({what})", found))
    return checks


@dataclass(frozen=True)
class Running:
    check: Check
    pod_cidr: str = ""  # the pod CIDR in force there ("" when not running or unknown)


def check_crispd(config: Config) -> Running:
    """A crispd on the socket: its version, and whether it says it is ready (runtime and network)."""
    path = Path(config.listen)
    if not path.exists():
        return Running(warn("crispd", f"not running (no socket {path})", "start it: crispd, or systemctl start "
                            "crispd (deploy/crispd.service)"))
    with grpc.insecure_channel(f"unix:{path}") as channel:
        runtime = cri.RuntimeServiceStub(channel)
        try:
            version = runtime.Version(cri.VersionRequest(), timeout=RPC_TIMEOUT)
            status = runtime.Status(cri.StatusRequest(verbose=True), timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            return Running(fail("crispd", f"{path} does not answer: {exc.code().name}: {exc.details()}",
                                "see crispd's log; restart it"))
    pod_cidr = str(json.loads(status.info.get("podCIDR", '""')) or "")
    not_ready = [f"{c.type}: {c.reason} {c.message}".strip() for c in status.status.conditions if not c.status]
    serving = f"crispd {version.runtime_version} on {path}"
    if not_ready:
        return Running(fail("crispd", f"{serving} is not ready: {'; '.join(not_ready)}",
                            "see the checks above and crispd's log"), pod_cidr)
    return Running(ok("crispd", f"{serving}: ready (runtime and network)"), pod_cidr)
