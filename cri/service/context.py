"""What every RPC implementation needs, built once by the daemon and passed in (no global state)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cri.config import Config
from cri.metrics import Metrics
from cri.server import Readiness
from cri.service.images import ImageManager
from cri.store.db import Store
from runtime.network.manager import NetworkManager


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
