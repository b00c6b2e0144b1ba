"""What every RPC implementation needs: the parts of crispd, wired once (`ServiceContext.wire`) from the ones
daemon.py starts. A bag of parts, frozen: nothing is added or replaced after it is built, and it has no behaviour
of its own beyond saying that an optional part is missing."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cri.cgroup_driver import CgroupDriver
from cri.config import Config
from cri.debug import DebugPoints
from cri.events import EventBroker, EventPublisher
from cri.handlers import RuntimeHandlers
from cri.lifecycle.checkpoints import Checkpoints
from cri.lifecycle.containers import ContainerController
from cri.lifecycle.creations import Creations
from cri.lifecycle.limits import ContainerLimits
from cri.lifecycle.pods import PodSandboxController
from cri.metrics import Metrics
from cri.nri.service import NriService
from cri.oci import NodeFacts
from cri.server import Readiness
from cri.service.images import ImageManager
from cri.shims.manager import ShimManager
from cri.stats import StatsCollector
from cri.store.containers import ContainerStore
from cri.store.db import Store
from cri.store.names import NameIndex
from cri.store.sandboxes import SandboxStore
from cri.streaming.server import StreamingServer
from runtime import errors
from runtime.cgroups import CgroupV2Manager
from runtime.network.manager import NetworkManager


@dataclass(frozen=True)
class ServiceContext:
    config: Config
    store: Store
    metrics: Metrics
    readiness: Readiness
    images: ImageManager
    sandboxes: SandboxStore
    sandbox_names: NameIndex
    containers: ContainerStore
    container_names: NameIndex
    # the shims of all containers (started through the zygote)
    shims: ShimManager
    # the server behind the URLs of Exec, Attach and PortForward
    streaming: StreamingServer
    # pod networking (CNI or the built-in bridge)
    network: NetworkManager | None
    # None when the host has no cgroup2 mount: pods cannot be run then
    cgroups: CgroupV2Manager | None
    # who makes, removes and owns the units of pod and container cgroups: the cgroupfs or the systemd driver
    cgroup_driver: CgroupDriver
    # crispd's own capabilities, oom_score_adj, limits: what container specs are built against
    node: NodeFacts
    handlers: RuntimeHandlers
    events: EventPublisher
    stats: StatsCollector
    creations: Creations
    debug: DebugPoints
    # NRI plugins (cri/nri/service.py): every call a no-op unless `[nri] enable`
    nri: NriService
    sandbox_control: PodSandboxController
    container_control: ContainerController
    # CheckpointContainer: whether CRIU works here (asked once), dumps into archives
    checkpoints: Checkpoints
    # wall clock in nanoseconds (CRI timestamps)
    clock_ns: Callable[[], int]

    @classmethod
    def wire(cls, *, config: Config, store: Store, metrics: Metrics, readiness: Readiness, images: ImageManager,
             sandboxes: SandboxStore, containers: ContainerStore, shims: ShimManager, streaming: StreamingServer,
             network: NetworkManager | None, debug: DebugPoints, cgroups: CgroupV2Manager | None, node: NodeFacts,
             clock_ns: Callable[[], int] = time.time_ns) -> ServiceContext:
        """The object graph of the RPCs, built once from the parts the daemon started."""
        sandbox_names = NameIndex(store, "sandbox")
        container_names = NameIndex(store, "container")
        broker = EventBroker(config.events.subscriber_buffer, on_drop=metrics.event_subscribers_dropped.inc)
        events = EventPublisher(broker, sandboxes, containers, clock_ns)
        cgroup_manager = _cgroup_manager(cgroups)
        driver = CgroupDriver(config.cgroup, cgroup_manager)
        limits = ContainerLimits(containers=containers, shims=shims, cgroups=driver,
                                 missing_controller=config.cgroup.missing_controller)
        nri = NriService(config=config.nri, cdi=config.cdi, sandboxes=sandboxes, containers=containers,
                         limits=limits)
        lifecycle = ContainerController(
            containers=containers, names=container_names, sandboxes=sandboxes, shims=shims, cgroups=driver,
            limits=limits, nri=nri, events=events, metrics=metrics, debug=debug, clock_ns=clock_ns,
            released=images.released)
        pods = PodSandboxController(
            state_dir=Path(config.state), missing_controller=config.cgroup.missing_controller,
            sandboxes=sandboxes, names=sandbox_names, netns_dir=config.network.netns_dir, containers=lifecycle,
            cgroups=driver, network=network, nri=nri, events=events, metrics=metrics, debug=debug, clock_ns=clock_ns,
            forker=shims)
        return cls(
            config=config, store=store, metrics=metrics, readiness=readiness, images=images, sandboxes=sandboxes,
            sandbox_names=sandbox_names, containers=containers, container_names=container_names, shims=shims,
            streaming=streaming, network=network, cgroups=cgroups, cgroup_driver=driver, node=node,
            handlers=RuntimeHandlers(config.runtime, Path(config.state), Path(config.root)), events=events,
            stats=StatsCollector(cgroup_manager, network, config.stats.disk_usage_cache_seconds,
                                 config.stats.network_timeout_seconds, clock_ns=clock_ns),
            creations=Creations(), debug=debug, nri=nri, sandbox_control=pods, container_control=lifecycle,
            checkpoints=Checkpoints(state_dir=Path(config.state), clock_ns=clock_ns), clock_ns=clock_ns)

    @property
    def state_dir(self) -> Path:
        return Path(self.config.state)

    @property
    def root_dir(self) -> Path:
        return Path(self.config.root)

    def cgroup_manager(self) -> CgroupV2Manager:
        return _cgroup_manager(self.cgroups)()


def _cgroup_manager(cgroups: CgroupV2Manager | None) -> Callable[[], CgroupV2Manager]:
    def manager() -> CgroupV2Manager:
        if cgroups is None:
            raise errors.FailedPrecondition("this host has no cgroup2 filesystem: crisp cannot run pods")
        return cgroups
    return manager
