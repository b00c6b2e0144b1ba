"""Pod namespaces held open by bind mounts, without a pause process (as CRI-O's pinns does).

`pin_namespaces` has a process forked from the warm zygote (a `Forker`: runtime/namespaces/forked.py) make the
new namespaces, set them up (`nsinit.set_up`: hostname, lo up, sysctls; a user namespace's id maps) and bind-mount
each one onto a file under the pod's dir; no program starts. `unpin_namespaces` unmounts the pins, and the
namespaces die with their last user.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from runtime import errors
from runtime.mounts import bind_mount, unmount
from runtime.namespaces.sysctl import sysctl_path

log = logging.getLogger(__name__)

KINDS = ("net", "ipc", "uts", "user")
PIN_TIMEOUT = 30.0


class Forker(Protocol):
    """The warm process that forks a pod's namespace work (the shim zygote: cri/shims/manager.ShimManager)."""

    async def fork_work(self, work: str, request: dict[str, Any], time_limit: float, what: str) -> dict[str, Any]:
        """The answer of `forked.<work>(request)` run in a forked process; raises the error it names, and
        DeadlineExceeded after `time_limit`."""
        ...


@dataclass(frozen=True)
class NamespaceSetup:
    """What to create for a pod and what to set inside it."""

    kinds: frozenset[str]  # a subset of KINDS
    hostname: str = ""  # set only when the pod has its own UTS namespace
    sysctls: tuple[tuple[str, str], ...] = ()
    # with "user": its uid and gid mappings (container id, host id, length); the others are made owned by it
    uid_mappings: tuple[tuple[int, int, int], ...] = ()
    gid_mappings: tuple[tuple[int, int, int], ...] = ()


def pin_paths(pin_dir: Path, kinds: Iterable[str]) -> dict[str, Path]:
    return {kind: pin_dir / kind for kind in kinds}


async def pin_namespaces(pin_dir: Path, setup: NamespaceSetup, forker: Forker) -> dict[str, Path]:
    """Create and pin the namespaces; on failure nothing stays mounted. Returns kind -> pin path."""
    unknown = set(setup.kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"cannot pin namespaces {sorted(unknown)}")
    if not setup.kinds:
        return {}
    paths = pin_paths(pin_dir, sorted(setup.kinds))
    await asyncio.to_thread(_prepare, pin_dir, list(paths.values()))
    request = {
        "hostname": setup.hostname if "uts" in setup.kinds else "",
        "loopback": "net" in setup.kinds,
        "sysctls": [(sysctl_path(key), value) for key, value in setup.sysctls],
        "pins": {kind: str(path) for kind, path in paths.items()},
        "uids": setup.uid_mappings, "gids": setup.gid_mappings,
        # the worker's alarm ends it at PIN_TIMEOUT; crispd waits a little longer, so nothing lands after it
        "timeout": PIN_TIMEOUT,
    }
    try:
        await forker.fork_work("pin_namespaces", request, PIN_TIMEOUT + 5, "pod namespace setup")
    except BaseException:
        await unpin_namespaces(paths.values())
        raise
    return paths


def _prepare(pin_dir: Path, files: list[Path]) -> None:
    pin_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in files:
        path.touch(mode=0o400)


async def publish_netns(pin: Path, target: Path) -> Path:
    """Bind the pinned network namespace `pin` on `target` too (/run/netns/crisp-<pod id>: `ip netns exec` then
    works); undone by `unpin_namespaces([target])`. AlreadyExists when something is there."""
    def prepare() -> None:
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            target.touch(mode=0o444, exist_ok=False)
        except FileExistsError:
            raise errors.AlreadyExists(f"{target} already exists") from None

    await asyncio.to_thread(prepare)
    try:
        await bind_mount(pin, target)
    except BaseException:
        await unpin_namespaces([target])
        raise
    return target


async def unpin_namespaces(paths: Iterable[Path]) -> None:
    """Unmount every pin and remove its file; missing ones are fine (idempotent)."""
    for path in paths:
        await unmount(path)
        await asyncio.to_thread(path.unlink, missing_ok=True)
