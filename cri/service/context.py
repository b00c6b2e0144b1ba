"""What every RPC implementation needs, built once by the daemon and passed in (no global state)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cri.config import Config
from cri.metrics import Metrics
from cri.server import Readiness
from cri.service.images import ImageManager
from cri.store.db import Store
from cri.store.names import NameIndex
from cri.store.sandboxes import Sandbox, SandboxStore
from runtime import errors
from runtime.cgroups import CgroupV2Manager
from runtime.network.manager import NetworkManager


def caller_gone(context: Any) -> bool:
    """True when the RPC's caller has given up: it cancelled, or its deadline has passed."""
    if context is None:
        return False
    if context.cancelled():
        return True
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


@dataclass
class ServiceContext:
    config: Config
    store: Store
    metrics: Metrics
    readiness: Readiness
    images: ImageManager
    # pod networking (CNI or the built-in bridge); None only in tests that need no network
    network: NetworkManager | None = None
    # wall clock in nanoseconds (CRI timestamps); a seam for tests
    clock_ns: Callable[[], int] = field(default=time.time_ns)
    sandboxes: SandboxStore = field(init=False)
    sandbox_names: NameIndex = field(init=False)
    # None when the host has no cgroup2 mount: pods cannot be run then
    cgroups: CgroupV2Manager | None = None
    # `[debug] fail_points`: named places where a test makes creation fail on purpose
    _abandoned: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sandboxes = SandboxStore(self.store)
        self.sandbox_names = NameIndex(self.store, "sandbox")

    @property
    def state_dir(self) -> Path:
        return Path(self.config.state)

    @property
    def root_dir(self) -> Path:
        return Path(self.config.root)

    def cgroup_manager(self) -> CgroupV2Manager:
        if self.cgroups is None:
            raise errors.FailedPrecondition("this host has no cgroup2 filesystem: crisp cannot run pods")
        return self.cgroups

    def fail_point(self, name: str) -> None:
        """Raise here if the config's `[debug] fail_points` names this place (failure-injection tests)."""
        if name in self.config.debug.fail_points:
            raise errors.CrispError(f"injected failure at {name}")

    async def delay_point(self, name: str) -> None:
        """Pause here if the config's `[debug] delay_points` names this place."""
        delay = self.config.debug.delay_points.get(name)
        if delay:
            await asyncio.sleep(delay / 1000)

    # Creations that finished after their caller had given up (a kubelet timeout): name -> id. A retry of the
    # same name gets that id instead of ALREADY_EXISTS.
    def mark_abandoned(self, name: str, object_id: str) -> None:
        self._abandoned[name] = object_id

    def take_abandoned(self, name: str) -> str | None:
        return self._abandoned.pop(name, None)

    # Hooks between pods and the parts that plug into them (containers, network); filled as those land.
    async def stop_pod_containers(self, sandbox: Sandbox) -> None:
        return None

    async def remove_pod_containers(self, sandbox: Sandbox) -> None:
        return None

    def pod_container_statuses(self, sandbox: Sandbox) -> list[Any]:
        return []
