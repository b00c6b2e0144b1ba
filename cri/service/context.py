"""What every RPC implementation needs, built once by the daemon and passed in (no global state)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cri.config import Config
from cri.metrics import Metrics
from cri.server import Readiness
from cri.store.db import Store
from cri.store.names import NameIndex
from cri.store.sandboxes import SandboxStore
from runtime import errors
from runtime.cgroups import CgroupV2Manager


@dataclass
class ServiceContext:
    config: Config
    store: Store
    metrics: Metrics
    readiness: Readiness
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

    # Creations that finished after their caller had given up (a kubelet timeout): name -> id. A retry of the
    # same name gets that id instead of ALREADY_EXISTS.
    def mark_abandoned(self, name: str, object_id: str) -> None:
        self._abandoned[name] = object_id

    def take_abandoned(self, name: str) -> str | None:
        return self._abandoned.pop(name, None)
