"""The container controller: make and start, stop and remove a container, record its exit once, watch it until it
exits. CreateContainer leaves the container unmade (its spec and shim ready); StartContainer makes it first
(`_make`: the executor's `create` through the shim), and a making that fails leaves it EXITED (StartError).

Start, Stop, Remove (and UpdateContainerResources) of one container run one at a time (the container's lock);
state changes are written to the store first and published as events right after. NRI plugins hear of each at
fixed points (cri/nri/service.py says which). A creation that crispd did not live to finish or undo is undone at
its next start (`undo_unfinished`) with the steps Remove uses. Remove answers once the container is gone from the
store and its name free; its remains are cleaned up right after, from a journal entry written with the row's
deletion, which stays until the cleanup succeeds (RemovePodSandbox finishes its containers' cleanups; crispd's
next start finishes what a dead crispd left).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cri import api as cri
from cri.cgroup_driver import CgroupDriver
from cri.debug import DebugPoints
from cri.events import EventPublisher
from cri.lifecycle.limits import ContainerLimits
from cri.metrics import Metrics
from cri.nri.service import NriService
from cri.shims.client import ShimClient
from cri.shims.manager import ShimManager
from cri.store.containers import CREATED, RUNNING, Container, ContainerStore
from cri.store.names import NameIndex
from cri.store.sandboxes import READY, SandboxStore
from runtime import errors
from runtime.bundle import load_config
from runtime.fstree import remove_tree
from runtime.rollback import Rollback
from shim.protocol import ExitStatus, ShimConfig

log = logging.getLogger(__name__)

# after SIGKILL, how long the container may take to be reported gone
KILL_WAIT = 10.0
# how long a shim that dropped a call may take to be gone, if it is dying
SHIM_GONE_WAIT = 2.0
# a removed container's cleanup that failed is tried again after this, doubling up to the max (seconds)
CLEANUP_RETRY_FIRST = 1.0
CLEANUP_RETRY_MAX = 60.0
# on a graceful stop, how long the cleanups under way may take to finish (the rest is the next crispd's)
CLEANUP_CLOSE_WAIT = 10.0
# how long StartContainer waits for the exit watch to reach the shim before it answers anyway
WATCH_SETUP_WAIT = 1.0
# a container whose making failed in StartContainer is EXITED with these (containerd's)
START_ERROR_EXIT_CODE = 128
START_ERROR_REASON = "StartError"


@dataclass(frozen=True)
class ContainerRemains:
    """Where a container that has no record may have left something (from its creation's intent, or the
    dirs' own names)."""

    bundle: Path
    container_dir: Path
    cgroup: str | None  # None: not known; left alone

    def to_json(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle), "container_dir": str(self.container_dir), "cgroup": self.cgroup}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerRemains:
        return cls(Path(data["bundle"]), Path(data["container_dir"]), data.get("cgroup"))


@dataclass(frozen=True)
class ShimPlan:
    """How a container's shim is spawned (its config, with this crispd's settings) and whether its executor waits
    for the container's cgroup (`CgroupDriver.container_hold`: the built-in executor's)."""

    config: ShimConfig
    hold: bool


@dataclass(eq=False)
class _Cleanup:
    """A removed container whose remains are still to be cleaned up (its journal entry is written)."""

    id: str
    sandbox_id: str
    remains: ContainerRemains
    snapshots: tuple[str, ...]  # the image snapshots it used (in use until the cleanup is done)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    done: bool = False
    failures: int = 0
    task: asyncio.Task[None] | None = None


def exit_reason(status: ExitStatus) -> str:
    if status.oom_killed:
        return "OOMKilled"
    return "Completed" if status.exit_code == 0 else "Error"


class ContainerController:
    def __init__(self, *, containers: ContainerStore, names: NameIndex, sandboxes: SandboxStore, shims: ShimManager,
                 cgroups: CgroupDriver, limits: ContainerLimits, nri: NriService,
                 events: EventPublisher, metrics: Metrics, debug: DebugPoints, clock_ns: Callable[[], int],
                 released: Callable[[tuple[str, ...]], Awaitable[None]] | None = None) -> None:
        """`released(snapshots)`: a removed container's remains are gone (image GC may take what only it held)."""
        self.containers = containers
        self.names = names
        self.sandboxes = sandboxes
        self.shims = shims
        self.cgroups = cgroups
        self.limits = limits
        self.nri = nri
        self.events = events
        self.metrics = metrics
        self.debug = debug
        self.clock_ns = clock_ns
        self.released = released
        # the exit watches and the cleanups: crispd keeps a reference to each (the loop keeps only weak ones)
        self._watches: set[asyncio.Task[None]] = set()
        # removed containers whose remains are being cleaned up, by id
        self._cleanups: dict[str, _Cleanup] = {}

    # --- start ----------------------------------------------------------------------------------------------

    async def start(self, container: Container, plan: ShimPlan | None) -> None:
        """Make the container if CreateContainer left it unmade (`_make`; `plan` is for that), then start it."""
        async with container.lock:
            if container.status.state != CREATED:
                raise errors.FailedPrecondition(
                    f"container {container.id} is {container.status.state}: only a created container can be "
                    "started")
            sandbox = self.sandboxes.find(container.meta.sandbox_id)
            if sandbox is None or sandbox.status.state != READY:
                raise errors.FailedPrecondition(f"the pod of container {container.id} is not ready")
            if container.unmade:
                assert plan is not None, "an unmade container is started with its shim's plan"
                await self._make(container, plan)  # no fail point: its own steps have theirs
            await self.nri.start_container(container)  # a plugin's error fails the start
            await self.debug.point("start_container.nri")
            try:
                started_at = await self.shims.client(container.id).start()
            except errors.Unavailable:
                await self._shim_died(container)  # no fail point: the start failed
                raise
            await self.debug.point("start_container.shim")
            await self.containers.update(container, state=RUNNING, started_at=started_at or self.clock_ns())
            watch, watching = self.watch(container)
            await self.debug.point("start_container.record")
        # the watch's set-up (a connection to the shim, a pidfd) is done before the answer, not while the caller's
        # next call (ContainerStatus, in critest and the kubelet) waits for the loop
        await _until_set(watching, watch, WATCH_SETUP_WAIT)  # no fail point: a wait, which changes nothing
        log.info("container %s started", container.id)
        self.events.container(container, cri.CONTAINER_STARTED_EVENT)
        await self.nri.post_start_container(container)  # no fail point: NRI hears of a done start

    async def _make(self, container: Container, plan: ShimPlan) -> None:
        """What CreateContainer left to StartContainer, as containerd makes its task there: the executor creates
        the container (namespaces, cgroup, rootfs; its init waits to be started) through the shim CreateContainer
        spawned (or a new one: crispd may have restarted since and the shim be gone), and its row gets the init's
        pid. A shim that has created it already (crispd was killed before the row had the pid) gives its pid.
        A failure undoes all of it (no shim, cgroup or mount is left) and the container is EXITED with exit code
        128, reason StartError and the error as its message, as containerd's: the kubelet makes a new one."""
        meta = container.meta
        try:
            async with Rollback(f"StartContainer {container.id}") as undo:
                # the undo steps RemoveContainer takes, in its order (undone last to first): a shim that dies half
                # way through the create (or a crispd killed meanwhile) leaves what it made for them
                undo.push("shim scope", lambda: self.cgroups.shim_gone(container.id))
                undo.push("container cgroup", lambda: self.cgroups.remove_leaf(meta.cgroup))
                undo.push("shim and container", lambda: self.shims.discard(container.id))
                made = await self._made_by_shim(container, plan)
                await self.debug.point("start_container.shim_ready")
                if made == 0:
                    held = self.cgroups.container_hold(meta.cgroup, container.id,
                                                       lambda: asyncio.to_thread(_spec_resources, meta.bundle)) \
                        if plan.hold else None
                    _, made = await self.shims.create(plan.config, placed=self.cgroups.shim_placement(container.id),
                                                      held=held, spawning=self._client(container.id))
                await self.debug.point("start_container.created")
                await self.containers.update(container, pid=made)
                await self.debug.point("start_container.pid")
                undo.commit()
        except errors.CrispError as exc:
            await self.record_exit(container, ExitStatus(  # no fail point: the start failed, this records how
                exit_code=START_ERROR_EXIT_CODE, reason=START_ERROR_REASON, message=str(exc),
                finished_at=self.clock_ns()))
            raise
        log.info("container %s made (init pid %d)", container.id, made)

    async def _made_by_shim(self, container: Container, plan: ShimPlan) -> int:
        """The init's pid if the container's shim has created it already, else 0 with a new shim ready for it
        (spawned if there is none; the remains of a dead one are cleaned up first). A spawn CreateContainer left
        under way is waited for first."""
        await self.shims.settled(container.id)
        if not self.shims.is_alive(container.id):
            await self.shims.discard(container.id)  # a dead shim's remains; nothing known is fine
            await self.shims.spawn(plan.config)
            return 0
        if self.shims.never_told(container.id):
            return 0  # new: no need to ask
        state = await self.shims.client(container.id).state()
        if state.state == "new":
            return 0
        if state.state == "created" and state.status is None:
            log.info("container %s: its shim had created it already (init pid %d)", container.id, state.pid)
            return state.pid
        raise errors.FailedPrecondition(f"container {container.id}: its shim says it is {state.state}, not created")

    async def _client(self, container_id: str) -> ShimClient:
        return self.shims.client(container_id)

    # --- resources ------------------------------------------------------------------------------------------

    async def update_resources(self, container: Container, resources: cri.LinuxContainerResources) -> None:
        """Change the limits of a created or running container live (cri/lifecycle/limits.py), as NRI plugins
        leave them (their updates of other containers are applied too)."""
        async with container.lock:
            self.limits.check(container)
            resources = await self.nri.update_container(container, resources)
            await self.limits.apply(container, resources)
        await self.nri.post_update_container(container)

    # --- exits ----------------------------------------------------------------------------------------------

    async def record_exit(self, container: Container, status: ExitStatus) -> None:
        """The container has exited: keep how, once (later reports of the same exit change nothing)."""
        message = status.message or (f"killed by signal {status.signal}" if status.signal else "")
        if not await self.containers.record_exit(
                container, exit_code=status.exit_code, finished_at=status.finished_at or self.clock_ns(),
                started_at=container.status.started_at or status.started_at,
                reason=status.reason or exit_reason(status), message=message):
            return
        log.info("container %s exited with %d (%s)", container.id, status.exit_code, container.status.reason)
        if status.oom_killed:
            sandbox = self.sandboxes.find(container.meta.sandbox_id)
            pod = sandbox.meta.config.metadata if sandbox is not None else cri.PodSandboxMetadata()
            self.metrics.oom_kills.labels(pod.namespace, pod.name, container.meta.config.metadata.name).inc()
        self.events.container(container, cri.CONTAINER_STOPPED_EVENT)
        await self.nri.container_stopped(container)

    async def _watch_exit(self, container: Container, watching: asyncio.Event) -> None:
        try:
            status = await self.shims.wait_exit(container.id, watching)
        except errors.NotFound:
            status = ExitStatus(exit_code=255, reason="Unknown", message="crisp lost track of this container's shim")
        await self.record_exit(container, status)

    async def _shim_died(self, container: Container) -> None:
        """A call failed because the container's shim is gone (killed under it): the container is killed and
        deleted, and its exit recorded (exit code 255, ShimDied, unless its status file says better)."""
        info = self.shims.info(container.id)
        if info is None:
            return
        try:
            # its connection closes as the process ends, a moment before it is gone
            await asyncio.wait_for(self.shims.shim_gone(info), SHIM_GONE_WAIT)
        except TimeoutError:
            return  # it failed the call and lives on
        await self.record_exit(container, await self.shims.dead_shim_status(info))

    def watch(self, container: Container) -> tuple[asyncio.Task[None], asyncio.Event]:
        """Wait for the container to exit (through its shim, or its status file if the shim dies) and record
        it; a failure of the watch is logged, never lost. Returns the watch, and what is set once the shim has
        its request."""
        watching = asyncio.Event()
        return self._spawn(f"exit watch {container.id}", self._watch_exit(container, watching)), watching

    def _spawn(self, what: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._watches.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._watches.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed: %s", what, t.exception(), exc_info=t.exception())

        task.add_done_callback(done)
        return task

    async def close(self) -> None:
        """crispd stops: the watches end (the shims go on; the next crispd watches again); the cleanups under
        way get CLEANUP_CLOSE_WAIT to finish, then stop too (their journal entries stay for the next crispd)."""
        running = [c.task for c in self._cleanups.values() if c.task is not None and c.failures == 0]
        if running:
            await asyncio.wait(running, timeout=CLEANUP_CLOSE_WAIT)
        tasks = list(self._watches)  # the cleanups' tasks too
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- stop -----------------------------------------------------------------------------------------------

    async def stop(self, container: Container, grace: int) -> None:
        async with container.lock:
            await self._stop(container, grace)

    async def _stop(self, container: Container, grace: int) -> None:
        """Stop signal, up to `grace` seconds (0: at once) for the main process, then SIGKILL; then nothing of the
        container may stay (its cgroup is killed). A created or exited container is left as it is."""
        if container.status.state != RUNNING:
            return
        client = self.shims.client(container.id)
        if grace > 0:
            with contextlib.suppress(errors.NotFound, errors.FailedPrecondition, errors.Unavailable):
                await client.kill(container.meta.stop_signal)
            await self.debug.point("stop_container.signal")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(container.exited.wait(), grace)
            await self.debug.point("stop_container.grace")
        if not container.exited.is_set():
            with contextlib.suppress(errors.NotFound, errors.FailedPrecondition, errors.Unavailable):
                await client.kill(signal.SIGKILL, all=True)
            await self.debug.point("stop_container.kill")
            try:
                await asyncio.wait_for(container.exited.wait(), KILL_WAIT)
            except TimeoutError:
                raise errors.DeadlineExceeded(f"container {container.id} did not exit after SIGKILL") from None
            await self.debug.point("stop_container.killed")
        await self._kill_cgroup(container.meta.cgroup)
        await self.debug.point("stop_container.cgroup")
        # NRI's StopContainer is delivered before StopContainer returns
        await self.nri.wait_stopped(container.id)  # no fail point: a wait
        log.info("container %s stopped", container.id)

    async def _kill_cgroup(self, path: str) -> None:
        """Whatever the container left behind (processes of a shared PID namespace) dies with its cgroup."""
        cgroup = self.cgroups.manager().cgroup(path)

        def kill() -> None:
            if cgroup.exists() and cgroup.created_by_crisp():
                cgroup.kill()

        await asyncio.to_thread(kill)

    # --- remove ---------------------------------------------------------------------------------------------

    async def remove(self, container: Container) -> None:
        async with container.lock:
            await self._remove(container)

    async def _remove(self, container: Container) -> None:
        """Force-stop; then the row goes, with a journal entry of the remains in the same transaction, and the
        name: the container is gone and its name free when RemoveContainer answers. Its remains (the shim
        deletes the container and exits, its cgroup, dirs) are cleaned up right after, from the journal
        (`_clean_up`; a crispd that dies first finishes at its next start). Idempotent."""
        if self.containers.find(container.id) is None:
            return  # removed while we waited for the lock
        await self._stop(container, 0)
        await self.debug.point("remove_container.stopped")
        meta = container.meta
        remains = ContainerRemains(Path(meta.bundle), Path(meta.container_dir), meta.cgroup)
        await self.containers.delete(container, remains.to_json())
        await self.debug.point("remove_container.record")
        await self.names.release(container.meta.name, container.id)
        await self.debug.point("remove_container.name")
        log.info("container %s removed; its remains are cleaned up next", container.id)
        self.events.container(container, cri.CONTAINER_DELETED_EVENT)
        self._clean_up_later(_Cleanup(container.id, meta.sandbox_id, remains,
                                      (*meta.lowerdirs, *meta.volume_snapshots)))
        await self.nri.remove_container(container)  # no fail point: NRI hears of a done removal

    def _clean_up_later(self, cleanup: _Cleanup) -> None:
        """Clean up a removed container's remains in the background, again after a failure (its journal entry
        stays meanwhile: RemovePodSandbox and crispd's next start try it too)."""
        self._cleanups[cleanup.id] = cleanup

        async def until_done() -> None:
            delay = CLEANUP_RETRY_FIRST
            while True:
                try:
                    await self._clean_up(cleanup)
                    if self.released is not None:
                        await self.released(cleanup.snapshots)
                    return
                except errors.CrispError as exc:
                    cleanup.failures += 1
                    log.warning("container %s: cleaning up its remains failed (%s); trying again in %.0f s",
                                cleanup.id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, CLEANUP_RETRY_MAX)

        cleanup.task = self._spawn(f"cleanup of container {cleanup.id}", until_done())

    async def _clean_up(self, cleanup: _Cleanup) -> None:
        """A removed container's shim deletes it and exits (a dead shim's remains are cleaned up), its cgroup
        and dirs go, then its journal entry. Once: a caller that comes while it runs waits for it; after a
        failure (it raises; everything stays) the next caller tries again."""
        async with cleanup.lock:
            if cleanup.done:
                return
            await self.shims.discard(cleanup.id)
            await self.debug.point("container_cleanup.shim")
            await self._remove_remains(cleanup.id, cleanup.remains)
            await self.debug.point("container_cleanup.dirs")
            await self.containers.removal_done(cleanup.id)
            await self.debug.point("container_cleanup.journal")
            cleanup.done = True
            self._cleanups.pop(cleanup.id, None)
            log.info("container %s: its remains are cleaned up", cleanup.id)

    async def _remove_remains(self, container_id: str, remains: ContainerRemains) -> None:
        """The container's cgroup (if crisp made it; with systemd its scope), its shim's scope (systemd), its
        bundle and its writable layer."""
        if remains.cgroup is not None:
            await self.cgroups.remove_leaf(remains.cgroup)
        await self.cgroups.shim_gone(container_id)

        def cleanup() -> None:
            remove_tree(remains.bundle, ignore_errors=True)
            remove_tree(remains.container_dir, ignore_errors=True)

        await asyncio.to_thread(cleanup)

    async def undo_unfinished(self, container_id: str, name: str, remains: ContainerRemains) -> None:
        """Undo a creation that crispd did not finish (it died): its shim deletes the container and exits (a
        dead shim's remains are cleaned up), whatever runs in its cgroup is killed, its dirs go, and its name is
        free again. A container that cannot be deleted raises, and everything stays for the next try."""
        log.info("container %s (%s): undoing its creation, which crispd did not finish", container_id,
                 name or "no name")
        await self.shims.discard(container_id)
        if remains.cgroup is not None:
            await self._kill_cgroup(remains.cgroup)
        await self._remove_remains(container_id, remains)
        if name:
            await self.names.release(name, container_id)

    # --- a pod's containers ---------------------------------------------------------------------------------

    async def stop_all(self, sandbox_id: str) -> None:
        """Stop every container of a pod, at once (the kubelet stops them with their grace before)."""
        for container in self.containers.of_sandbox(sandbox_id):
            await self.stop(container, 0)

    async def remove_all(self, sandbox_id: str) -> None:
        """Remove every container of a pod, and finish the cleanup of every removed one (a failed cleanup is
        tried again now, and raises if it fails again: the pod stays for the next RemovePodSandbox)."""
        for container in self.containers.of_sandbox(sandbox_id):
            await self.remove(container)
        for cleanup in [c for c in self._cleanups.values() if c.sandbox_id == sandbox_id]:
            await self._clean_up(cleanup)


def _spec_resources(bundle: str) -> Mapping[str, Any]:
    """The limits in the container's spec (as CreateContainer wrote them, and UpdateContainerResources since)."""
    linux = load_config(bundle).get("linux")
    resources = linux.get("resources") if isinstance(linux, dict) else None
    return resources if isinstance(resources, dict) else {}


async def _until_set(event: asyncio.Event, task: asyncio.Task[None], seconds: float) -> None:
    """Until `event` is set, `task` has ended or `seconds` have passed, whichever comes first."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter, task}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
