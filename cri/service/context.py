"""What every RPC implementation needs, built once by the daemon and passed in (no global state)."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cri.cgroup_driver import CgroupDriver
from cri.config import Config
from cri.events import EventBroker
from cri.metrics import Metrics, StateSnapshot
from cri.oci import NodeFacts
from cri.server import Readiness
from cri.service.images import ImageManager, InUse
from cri.stats import StatsCollector
from cri.store.containers import Container, ContainerStore
from cri.store.db import Store
from cri.store.names import NameIndex
from cri.store.sandboxes import Sandbox, SandboxStore
from cri.streaming.server import StreamingServer
from runtime import errors
from runtime.cgroups import CgroupV2Manager
from runtime.network.manager import NetworkManager
from shim.manager import ShimManager, shim_alive

log = logging.getLogger(__name__)


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
    containers: ContainerStore = field(init=False)
    container_names: NameIndex = field(init=False)
    # the shims of all containers (started through the zygote); None only in tests that run no container
    shim_manager: ShimManager | None = None
    # crispd's own capabilities, oom_score_adj, limits: what container specs are built against
    node: NodeFacts = field(default_factory=lambda: NodeFacts(capabilities=()))
    # GetContainerEvents subscribers
    events: EventBroker = field(init=False)
    # the stats and metrics RPCs' samples, rates and caches
    stats: StatsCollector = field(init=False)
    _background: set[asyncio.Task[None]] = field(default_factory=set)
    # None when the host has no cgroup2 mount: pods cannot be run then
    cgroups: CgroupV2Manager | None = None
    # who makes, removes and updates pod and container cgroups: the cgroupfs or the systemd driver
    cgroup_driver: CgroupDriver = field(init=False)
    # the server behind the URLs of Exec, Attach and PortForward; None only in tests that stream nothing
    streaming: StreamingServer | None = None
    # `[debug] fail_points`: named places where a test makes creation fail on purpose
    _abandoned: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sandboxes = SandboxStore(self.store)
        self.sandbox_names = NameIndex(self.store, "sandbox")
        self.containers = ContainerStore(self.store)
        self.container_names = NameIndex(self.store, "container")
        self.events = EventBroker(self.config.events.subscriber_buffer,
                                  on_drop=self.metrics.event_subscribers_dropped.inc)
        self.cgroup_driver = CgroupDriver(self.config.cgroup, self.cgroup_manager)
        self.stats = StatsCollector(self.cgroup_manager, self.network, self.config.stats.disk_usage_cache_seconds,
                                    self.config.stats.network_timeout_seconds, clock_ns=self.clock_ns)

    @property
    def state_dir(self) -> Path:
        return Path(self.config.state)

    @property
    def root_dir(self) -> Path:
        return Path(self.config.root)

    @property
    def shims(self) -> ShimManager:
        if self.shim_manager is None:
            raise errors.Unavailable("crispd runs without shims: containers cannot be run")
        return self.shim_manager

    def streaming_server(self) -> StreamingServer:
        if self.streaming is None:
            raise errors.Unavailable("crispd runs without its streaming server")
        return self.streaming

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
    # same name gets that id instead of ALREADY_EXISTS, once.
    def abandoned_result(self, names: NameIndex, name: str) -> str | None:
        """The id made for `name` by a creation whose caller gave up, if that is who holds the name."""
        holder = names.holder(name)
        if holder is not None and self._abandoned.get(name) == holder:
            del self._abandoned[name]
            return holder
        return None

    async def create_to_the_end(self, what: str, name: str, object_id: str, work: Coroutine[Any, Any, None],
                                rpc_context: Any) -> None:
        """Run a creation to its end even if its caller goes away (cancels, or its deadline passes); then the
        result is kept for the caller's retry (`abandoned_result`)."""
        task = asyncio.ensure_future(work)

        def keep(t: asyncio.Task[None]) -> None:
            if not t.cancelled() and t.exception() is None:
                log.info("%s %s (%s) finished creating after its caller gave up", what, object_id, name)
                self._abandoned[name] = object_id

        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(keep)
            raise
        if caller_gone(rpc_context):
            keep(task)

    # --- containers' helpers shared by the RPC modules ----------------------------------------------------

    def spawn_background(self, what: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run coro as a task crispd keeps a reference to; a failure is logged, never lost."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed: %s", what, t.exception(), exc_info=t.exception())

        task.add_done_callback(done)

    async def cancel_background(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def discard_shim(self, container_id: str) -> None:
        """Make the container and its shim go away: a live shim deletes the container and exits; a dead one's
        remains are cleaned up; nothing known is fine."""
        info = self.shims.info(container_id)
        if info is None:
            return
        if self.shims.is_alive(container_id):
            try:
                await self.shims.client(container_id).shutdown(force=True)
            except errors.CrispError as exc:
                log.warning("container %s: shim shutdown failed (%s); killing it", container_id, exc)
                await self.shims.kill_shim(container_id)
                await self.shims.cleanup_dead(info)
        else:
            await self.shims.cleanup_dead(info)
        self.shims.forget(container_id)

    async def images_in_use(self) -> InUse:
        """For image GC: the images and snapshots the containers still use."""
        containers = self.containers.all()
        return InUse(images=frozenset(c.meta.image_id for c in containers),
                     snapshots=frozenset(d for c in containers for d in c.meta.lowerdirs))

    def forget_stats_of_removed(self) -> None:
        """Rates and caches of containers and pods that are gone are dropped."""
        self.stats.forget_except([c.id for c in self.containers.all()] + [s.id for s in self.sandboxes.all()])

    def state_snapshot(self) -> StateSnapshot:
        """What exists now, for the metrics page (counted here, on the loop, where the stores live)."""
        shims = [(i.pid, i.start_time) for i in self.shim_manager.known()] if self.shim_manager else None
        return StateSnapshot(
            containers=collections.Counter(c.status.state for c in self.containers.all()),
            pods=collections.Counter(s.status.state for s in self.sandboxes.all()),
            event_subscribers=self.events.subscribers, ready=self.readiness.ready,
            shims_alive=None if shims is None else lambda: sum(shim_alive(pid, start) for pid, start in shims))

    def container_event(self, container: Container, event_type: int) -> None:
        """A container changed state (created, started, stopped, deleted): tell GetContainerEvents subscribers,
        with the statuses of its pod and of the pod's containers as they are now."""
        if self.events.subscribers:
            # imported here: the status modules build on this one
            from cri.service.container_events import event_response

            self.events.publish(event_response(self, container.id, container.meta.sandbox_id, event_type))

    def sandbox_event(self, sandbox: Sandbox, event_type: int) -> None:
        """A pod changed state: the event carries the pod's id as the container id, as the kubelet expects."""
        if self.events.subscribers:
            from cri.service.container_events import event_response

            self.events.publish(event_response(self, sandbox.id, sandbox.id, event_type, sandbox))
