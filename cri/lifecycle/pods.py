"""The pod-sandbox controller: run, stop and remove a pod.

No pause process and no sandbox image: the pod's network, IPC and UTS namespaces are created by a short-lived helper
and kept open by bind mounts under `<state>/sandboxes/<id>/ns`. Only a pod that shares its PID namespace gets a
process of its own (a PID 1 that reaps), in its own leaf of the pod cgroup.

Running a pod is a list of steps, each of which registers its undo; removing a pod runs the same undo functions
(`_remove_dir`, `_remove_cgroup`, `_unpin`, `_remove_pod_init`, `_unmount_shm`, `_teardown_network`) in the same
order, so a failed RunPodSandbox and a RemovePodSandbox leave the same nothing behind. Every undo is idempotent:
missing pieces are fine. Everything a request could get wrong is checked in `plan`, before anything is made.
NRI plugins hear of a pod at fixed points (cri/nri/service.py says which); a new pod stays invisible until they
have agreed to it.

A creation that crispd did not live to finish or undo (it was killed) is undone at its next start with the same
steps (`undo_unfinished`), from what the name reservation kept of the plan (`PodPlan.intent`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from cri import api as cri
from cri.cgroup_driver import CgroupDriver
from cri.debug import DebugPoints
from cri.events import EventPublisher
from cri.lifecycle.containers import ContainerController
from cri.lifecycle.pod_files import pod_hostname, write_pod_files
from cri.metrics import Metrics
from cri.network import pod_network_request
from cri.nri.service import NriService
from cri.oci import oci_resources
from cri.oci.userns import PodUserns, pod_userns
from cri.store.names import NameIndex
from cri.store.sandboxes import NOT_READY, READY, Sandbox, SandboxMeta, SandboxStatus, SandboxStore
from runtime import errors
from runtime.cgroups import enforceable_limits
from runtime.cgroups import paths as cgroup_paths
from runtime.fstree import remove_tree
from runtime.mounts import mount_tmpfs, unmount
from runtime.namespaces.pidns import PodInit, find_pod_init, remove_pid_pin, start_pod_init, stop_pod_init
from runtime.namespaces.pin import KINDS, Forker, NamespaceSetup, pin_namespaces, publish_netns, unpin_namespaces
from runtime.namespaces.sysctl import check_sysctls, pod_host_namespaces
from runtime.network.manager import NetworkManager
from runtime.network.types import NetworkResult, PodNetworkRequest
from runtime.procs import ProcessRef
from runtime.rollback import Rollback

log = logging.getLogger(__name__)

T = TypeVar("T")
SHM_SIZE = 64 * 1024 * 1024
HOST_SHM = "/dev/shm"


@dataclass(frozen=True)
class PodPlan:
    """A pod about to be run: the request checked and everything derived from it, before anything is made."""

    id: str
    name: str
    config: cri.PodSandboxConfig
    handler: str
    dir: Path
    cgroup: str
    hostname: str
    sysctls: dict[str, str]
    host_network: bool
    host_ipc: bool
    host_pid: bool
    shared_pid: bool
    # the pod's own user namespace (userns_options POD), made before its other namespaces, which it owns
    userns: PodUserns | None
    # the pod's network, once for setup and for its undo; None for a host-network pod
    network: PodNetworkRequest | None

    def intent(self) -> dict[str, Any]:
        """What undoing this creation needs, kept with the name reservation until the pod is removed."""
        return {"dir": str(self.dir), "cgroup": self.cgroup, "config": self.config.SerializeToString().hex()}


@dataclass(frozen=True)
class PodRemains:
    """What a pod may hold on the host, to be given back (from its record, or from a creation's intent)."""

    id: str
    dir: Path
    cgroup: str | None  # None: not known (a pod dir without record or intent): left alone
    network: PodNetworkRequest | None
    pod_init: ProcessRef | None  # None: found from its pinned PID namespace, if it has one
    pins: tuple[Path, ...]
    pid_pin: Path | None


class _NoNetns(Exception):
    """The pod's namespaces were not made: its network setup stops before it attaches anything."""


class _Alongside(Generic[T]):
    """A step of RunPodSandbox that runs while it makes the pod's other parts (the network setup, a pod init).
    Until `result` has handed it over (RunPodSandbox then pushes the step's undo in its place among the steps),
    `undo` waits for it and undoes what it made if it succeeded (a failed one undid itself)."""

    def __init__(self, work: Coroutine[Any, Any, T], undo: Callable[[T], Awaitable[None]]) -> None:
        self._task = asyncio.ensure_future(work)
        self._undo = undo
        self._handed_over = False

    async def result(self) -> T:
        result = await self._task
        self._handed_over = True
        return result

    async def undo(self) -> None:
        await asyncio.wait({self._task})
        if self._handed_over or self._task.cancelled() or self._task.exception() is not None:
            return
        await self._undo(self._task.result())


class PodSandboxController:
    def __init__(self, *, state_dir: Path, missing_controller: str, sandboxes: SandboxStore, names: NameIndex,
                 netns_dir: str, containers: ContainerController, cgroups: CgroupDriver,
                 network: NetworkManager | None, nri: NriService, events: EventPublisher, metrics: Metrics,
                 debug: DebugPoints, clock_ns: Callable[[], int], forker: Forker) -> None:
        self.state_dir = state_dir
        self.forker = forker  # the shim zygote: pods' namespace work is forked from it
        self.netns_dir = netns_dir
        self.missing_controller = missing_controller
        self.sandboxes = sandboxes
        self.names = names
        self.containers = containers
        self.cgroups = cgroups
        self.network = network
        self.nri = nri
        self.events = events
        self.metrics = metrics
        self.debug = debug
        self.clock_ns = clock_ns

    # --- run ------------------------------------------------------------------------------------------------

    def plan(self, sandbox_id: str, name: str, config: cri.PodSandboxConfig, handler: str) -> PodPlan:
        """Check what a RunPodSandbox request asks for (sysctls, hostname, cgroup, port mappings); raises
        InvalidArgument before anything is made."""
        linux = config.linux
        ns = linux.security_context.namespace_options
        host_network, host_ipc = ns.network == cri.NODE, ns.ipc == cri.NODE
        userns = pod_userns(ns)
        pod_dir = self.state_dir / "sandboxes" / sandbox_id
        network = self._pod_network(sandbox_id, str(pod_dir / "ns" / "net"), config)
        return PodPlan(
            id=sandbox_id, name=name, config=config, handler=handler, dir=pod_dir,
            cgroup=self.cgroups.layout.pod(linux.cgroup_parent, config.metadata.uid),
            hostname=pod_hostname(config, host_network),
            sysctls=check_sysctls(linux.sysctls, pod_host_namespaces(host_network=host_network, host_ipc=host_ipc)),
            host_network=host_network, host_ipc=host_ipc, host_pid=ns.pid == cri.NODE, shared_pid=ns.pid == cri.POD,
            userns=userns, network=network)

    async def run(self, plan: PodPlan) -> Sandbox:
        """Make the pod (its name is reserved by the caller): on failure every step made so far is undone, the
        name reservation included; a full filesystem is RESOURCE_EXHAUSTED naming the pod's dir."""
        with errors.writing(f"pod {plan.id} in {plan.dir}"):
            return await self._make(plan)

    async def _make(self, plan: PodPlan) -> Sandbox:
        pod_dir = plan.dir
        async with Rollback(f"RunPodSandbox {plan.id}") as undo:
            undo.push("name reservation", lambda: self.names.release(plan.name, plan.id))
            await self.debug.point("run_pod_sandbox.name")
            # with a user namespace the pod's root (a host uid) may pass through to its files (as containerd's 0711)
            await asyncio.to_thread(pod_dir.mkdir, mode=0o711 if plan.userns else 0o700, parents=True)
            undo.push("pod dir", lambda: self._remove_dir(pod_dir))
            await self.debug.point("run_pod_sandbox.dir")

            await self.cgroups.create_pod_cgroup(plan.cgroup)
            undo.push("pod cgroup", lambda: self._remove_cgroup(plan.cgroup))
            await self.debug.point("run_pod_sandbox.cgroup")

            kinds = {k for k, own in (("net", not plan.host_network), ("ipc", not plan.host_ipc),
                                      ("uts", not plan.host_network)) if own}
            if plan.userns is not None:
                kinds.add("user")
            setup = NamespaceSetup(kinds=frozenset(kinds), hostname=plan.hostname, sysctls=tuple(plan.sysctls.items()),
                                   uid_mappings=plan.userns.uids if plan.userns else (),
                                   gid_mappings=plan.userns.gids if plan.userns else ())
            network_setup: _Alongside[NetworkResult] | None = None
            if plan.network is not None:
                # what needs no netns is done while the namespaces are pinned; the pod is attached while the netns
                # gets its name, the pod init starts and the pod's files are made: it needs only the pinned netns
                network_request = plan.network
                pinned: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                attaching = network_setup = _Alongside(self._setup_network(network_request, pinned),
                                                       lambda _: self._teardown_network(network_request))
                undo.push("pod network, before its netns", lambda: self._no_netns(pinned, attaching))
            pins = await pin_namespaces(pod_dir / "ns", setup, self.forker)
            undo.push("namespaces", lambda: self._unpin(tuple(pins.values())))
            if network_setup is not None:
                pinned.set_result(None)
                # pushed after the namespaces' undo, so it runs before the netns pin goes (CNI DEL wants the netns)
                undo.push("pod network, while attaching", attaching.undo)
            await self.debug.point("run_pod_sandbox.namespaces")
            namespaces = {kind: str(path) for kind, path in pins.items()}

            pid_pin = pod_dir / "ns" / "pid"
            starting: _Alongside[PodInit] | None = None
            if plan.shared_pid:
                # started while the netns gets its name (it needs only the pod's user namespace, if it has one)
                starting = _Alongside(self._start_pod_init(plan, pid_pin, namespaces.get("user", "")),
                                      lambda init: self._remove_pod_init(init.ref, pid_pin, plan.cgroup, plan.id))
                undo.push("pod init, while starting", starting.undo)

            netns_path = ""
            if "net" in pins and self.netns_dir:
                published = await publish_netns(pins["net"], self._netns_name(plan.id))
                undo.push("netns name", lambda: self._unpin((published,)))
                await self.debug.point("run_pod_sandbox.netns_name")
                netns_path = str(published)

            pod_init = None
            if starting is not None:
                init = await starting.result()
                init_ref = init.ref
                undo.push("pod init", lambda: self._remove_pod_init(init_ref, pid_pin, plan.cgroup, plan.id))
                await self.debug.point("run_pod_sandbox.pod_init")
                await self.cgroups.place_pod_init(plan.cgroup, plan.id, init_ref.pid, init.born_in_cgroup)
                await self.debug.point("run_pod_sandbox.pod_init_cgroup")
                namespaces["pid"] = str(pid_pin)
                pod_init = (init_ref.pid, init_ref.start_time)

            files = await asyncio.to_thread(write_pod_files, pod_dir, plan.config, plan.hostname, plan.host_network)
            await self.debug.point("run_pod_sandbox.files")
            shm_path = HOST_SHM
            if not plan.host_ipc:
                shm = pod_dir / "shm"
                await asyncio.to_thread(shm.mkdir, mode=0o755)
                await self.debug.point("run_pod_sandbox.shm_dir")
                await mount_tmpfs(shm, size_bytes=SHM_SIZE)
                undo.push("pod /dev/shm", lambda: self._unmount_shm(shm))
                await self.debug.point("run_pod_sandbox.shm")
                shm_path = str(shm)

            meta = SandboxMeta(
                id=plan.id, name=plan.name, config=plan.config, runtime_handler=plan.handler,
                created_at=self.clock_ns(), dir=str(pod_dir), cgroup=plan.cgroup, namespaces=namespaces,
                host_network=plan.host_network, host_ipc=plan.host_ipc, host_pid=plan.host_pid,
                hostname=plan.hostname, hostname_path=str(files["hostname"]), hosts_path=str(files["hosts"]),
                resolv_path=str(files["resolv.conf"]), shm_path=shm_path, netns_path=netns_path)
            status = SandboxStatus(state=READY, pod_init=pod_init)
            if network_setup is not None:
                result = await network_setup.result()
                # pushed after the namespaces' undo, so it runs before the netns pin goes (CNI DEL wants the netns)
                undo.push("pod network", lambda: self._teardown_network(plan.network))
                status = dataclasses.replace(status, ips=tuple(result.pod_ips), network=result.to_json())
                await self.debug.point("run_pod_sandbox.network")

            sandbox = Sandbox(meta, status)
            await self.nri.run_pod_sandbox(sandbox)  # the pod stays invisible until the NRI plugins agree
            undo.push("NRI plugins", lambda: self.nri.remove_pod_sandbox(sandbox))
            await self.debug.point("run_pod_sandbox.nri")
            await self.sandboxes.add(sandbox)
            undo.push("sandbox row", lambda: self.sandboxes.delete(sandbox))
            await self.debug.point("run_pod_sandbox.record")
            undo.commit()
        log.info("pod %s (%s) is ready", plan.id, plan.name)
        self.events.sandbox(sandbox, cri.CONTAINER_CREATED_EVENT)
        self.events.sandbox(sandbox, cri.CONTAINER_STARTED_EVENT)
        return sandbox

    @staticmethod
    async def _no_netns(pinned: asyncio.Future[None], setup: _Alongside[NetworkResult]) -> None:
        """The pod's namespaces were not made: its network setup, waiting for them, stops before it attaches
        anything (once the netns is pinned, "pod network, while attaching" undoes the setup instead)."""
        if not pinned.done():
            pinned.set_exception(_NoNetns())
            await setup.undo()

    async def _start_pod_init(self, plan: PodPlan, pid_pin: Path, userns: str) -> PodInit:
        """The pod's PID 1, born in its leaf of the pod cgroup where the driver makes that beforehand (cgroupfs):
        the leaf goes again if PID 1 does not start."""
        birthplace = await self.cgroups.pod_init_birthplace(plan.cgroup, plan.id)
        try:
            return await start_pod_init(pid_pin, plan.id, self.forker, userns=userns, cgroup=birthplace)
        except BaseException:
            if birthplace:
                await self.cgroups.remove_leaf(self.cgroups.layout.leaf(plan.cgroup, plan.id))
            raise

    async def _setup_network(self, request: PodNetworkRequest, pinned: Awaitable[None]) -> NetworkResult:
        """Attach the pod's network namespace to the pod network, once `pinned` says it is there (the first half of
        the setup goes first)."""
        assert self.network is not None
        started = time.monotonic()
        try:
            backend = await self.network.prepare(request)
        except BaseException:
            self.metrics.network_setup_failures.inc()
            raise
        prepared = time.monotonic()
        await pinned  # raises _NoNetns when the namespaces were not made: no setup failed then
        resumed = time.monotonic()
        try:
            result = await backend.setup(request)
        except BaseException:
            self.metrics.network_setup_failures.inc()
            raise
        seconds = (prepared - started) + (time.monotonic() - resumed)
        self.metrics.network_setup_duration.labels(backend=result.backend).observe(seconds)
        log.info("pod %s: network %s/%s, IPs %s (%.1f ms)", request.sandbox_id, result.backend, result.network,
                 ", ".join(result.pod_ips), seconds * 1e3)
        return result

    # --- stop and remove ------------------------------------------------------------------------------------

    async def stop(self, sandbox: Sandbox) -> None:
        async with sandbox.lock:
            await self._stop(sandbox)

    async def _stop(self, sandbox: Sandbox) -> None:
        """Kill everything in the pod (no grace: the kubelet stops containers first), tear its network down and let
        its network namespace go."""
        await self.containers.stop_all(sandbox.id)
        await self.debug.point("stop_pod_sandbox.containers")
        await self._kill_pod_processes(sandbox)
        await self.debug.point("stop_pod_sandbox.processes")
        if sandbox.status.state == READY:
            await self.nri.stop_pod_sandbox(sandbox)  # once, with the containers stopped and the pod still there
            await self.debug.point("stop_pod_sandbox.nri")
        await self._teardown_network(self._network_request(sandbox))
        await self.debug.point("stop_pod_sandbox.network")
        await self._unpin_netns(sandbox)
        await self.debug.point("stop_pod_sandbox.netns")
        was_ready = sandbox.status.state == READY
        if was_ready or sandbox.status.ips:  # the addresses went back to the pool: PodSandboxStatus shows none
            await self.sandboxes.update(sandbox, state=NOT_READY, ips=())
            await self.debug.point("stop_pod_sandbox.record")
        if was_ready:
            log.info("pod %s stopped", sandbox.id)
            self.events.sandbox(sandbox, cri.CONTAINER_STOPPED_EVENT)

    async def _unpin_netns(self, sandbox: Sandbox) -> None:
        """A stopped pod's network namespace goes with its network (CRI: StopPodSandbox reclaims the pod's network
        resources; containerd removes the netns there too): no process of the pod is left to use it, and a stopped
        pod may stay for as long as its API object does. Its `ip netns` name goes with it; the pod's other pins stay
        until remove."""
        netns = sandbox.meta.namespaces.get("net")
        if sandbox.meta.netns_path:
            await self._unpin((Path(sandbox.meta.netns_path),))
        if netns and not sandbox.meta.host_network:
            await self._unpin((Path(netns),))

    async def remove(self, sandbox: Sandbox) -> None:
        """Stop the pod, remove its containers, then undo every step of its creation (idempotent)."""
        async with sandbox.lock:
            if self.sandboxes.find(sandbox.id) is None:  # removed while we waited for the lock
                return
            await self._stop(sandbox)
            await self.debug.point("remove_pod_sandbox.stopped")
            await self.containers.remove_all(sandbox.id)
            await self.debug.point("remove_pod_sandbox.containers")
            meta = sandbox.meta
            pid_pin = meta.namespaces.get("pid")
            netns_name = (Path(meta.netns_path),) if meta.netns_path else ()
            await self._dismantle(PodRemains(  # no fail point: its steps have theirs
                id=sandbox.id, dir=Path(meta.dir), cgroup=meta.cgroup, network=self._network_request(sandbox),
                pod_init=sandbox.status.pod_init_ref(),
                pins=netns_name + tuple(Path(p) for kind, p in meta.namespaces.items() if kind != "pid"),
                pid_pin=Path(pid_pin) if pid_pin is not None else None))
            await self.sandboxes.delete(sandbox)
            await self.debug.point("remove_pod_sandbox.record")
            await self.names.release(meta.name, sandbox.id)
            await self.debug.point("remove_pod_sandbox.name")
        log.info("pod %s removed", sandbox.id)
        self.events.sandbox(sandbox, cri.CONTAINER_DELETED_EVENT)
        await self.nri.remove_pod_sandbox(sandbox)  # no fail point: NRI hears of a done removal

    async def _dismantle(self, pod: PodRemains) -> None:
        """Give back everything the pod holds on the host, in the order a failed RunPodSandbox undoes it: its
        network (again, for a remove: a stop may have found it busy), /dev/shm, PID 1, the pins, the cgroup, the
        dir. Each step is idempotent."""
        await self._teardown_network(pod.network)
        await self.debug.point("remove_pod_sandbox.network")
        await self._unmount_shm(pod.dir / "shm")
        await self.debug.point("remove_pod_sandbox.shm")
        if pod.pid_pin is not None:
            await self._remove_pod_init(pod.pod_init, pod.pid_pin, pod.cgroup, pod.id)
            await self.debug.point("remove_pod_sandbox.pod_init")
        await self._unpin(pod.pins)
        await self.debug.point("remove_pod_sandbox.namespaces")
        if pod.cgroup is not None:
            await self._remove_cgroup(pod.cgroup)
            await self.debug.point("remove_pod_sandbox.cgroup")
        await self._remove_dir(pod.dir)
        await self.debug.point("remove_pod_sandbox.dir")

    async def undo_unfinished(self, sandbox_id: str, name: str, intent: dict[str, Any]) -> None:
        """Undo a creation that crispd did not finish (it died): the steps a failed RunPodSandbox would have run,
        from the reservation's intent (empty for a pod dir that nothing refers to), and the name is free again."""
        pod_dir = Path(intent.get("dir") or self.state_dir / "sandboxes" / sandbox_id)
        cgroup = intent.get("cgroup")
        network: PodNetworkRequest | None = None
        if "config" in intent:
            config = cri.PodSandboxConfig.FromString(bytes.fromhex(intent["config"]))
            network = self._pod_network(sandbox_id, str(pod_dir / "ns" / "net"), config)
        elif self.network is not None:
            network = PodNetworkRequest(sandbox_id=sandbox_id, netns="")
        log.info("pod %s (%s): undoing its creation, which crispd did not finish", sandbox_id, name or "no name")
        if not cgroup:
            log.warning("pod %s: nothing says which cgroup it had (a dir without a record): its cgroup is left",
                        sandbox_id)
        netns_name = (self._netns_name(sandbox_id),) if self.netns_dir else ()
        await self._dismantle(PodRemains(
            id=sandbox_id, dir=pod_dir, cgroup=str(cgroup) if cgroup else None, network=network, pod_init=None,
            pins=netns_name + tuple(pod_dir / "ns" / kind for kind in KINDS), pid_pin=pod_dir / "ns" / "pid"))
        if name:
            await self.names.release(name, sandbox_id)

    async def update_resources(self, sandbox: Sandbox, resources: cri.LinuxContainerResources) -> None:
        """Size the pod cgroup, live: crispd owns it when it made it (the kubelet sizes its own); with the systemd
        driver its slice's unit properties first."""
        manager = self.cgroups.manager()
        path = sandbox.meta.cgroup
        what = f"pod {sandbox.id}"
        oci = oci_resources(resources, swap_limit=True)
        if not await asyncio.to_thread(manager.cgroup(path).created_by_crisp):
            raise errors.FailedPrecondition(f"{what}: its cgroup {path} is the kubelet's; the kubelet sizes it")
        await self.nri.update_pod_sandbox(sandbox, resources)

        def enforceable() -> dict[str, Any]:
            return enforceable_limits(oci, manager.missing_controllers(oci, path), self.missing_controller, what)

        limits = await asyncio.to_thread(enforceable)
        await self.cgroups.set_unit_resources(path, limits)
        await asyncio.to_thread(lambda: manager.open(path).apply(limits))
        await self.nri.post_update_pod_sandbox(sandbox)

    async def _kill_pod_processes(self, sandbox: Sandbox) -> None:
        """SIGKILL whatever still runs in the pod: its PID 1 (if any) and every crisp leaf of the pod cgroup."""
        ref = sandbox.status.pod_init_ref()
        if ref is not None:
            await stop_pod_init(ref)
        manager = self.cgroups.manager()

        def kill_leaves() -> None:
            pod = manager.cgroup(sandbox.meta.cgroup)
            if not pod.exists():
                return
            for child in pod.children():
                if child.startswith(cgroup_paths.CONTAINER_PREFIX):
                    leaf = manager.cgroup(cgroup_paths.join(sandbox.meta.cgroup, child))
                    if leaf.created_by_crisp():
                        leaf.kill()

        await asyncio.to_thread(kill_leaves)

    def _network_request(self, sandbox: Sandbox) -> PodNetworkRequest | None:
        """The pod's network request as RunPodSandbox made it (host-network pods have none)."""
        return self._pod_network(sandbox.id, sandbox.meta.namespaces.get("net", ""), sandbox.meta.config)

    def _pod_network(self, sandbox_id: str, netns: str, config: cri.PodSandboxConfig) -> PodNetworkRequest | None:
        """The network request of a pod (None for a host-network pod, or without a pod network)."""
        if config.linux.security_context.namespace_options.network == cri.NODE or self.network is None:
            return None
        return pod_network_request(sandbox_id, netns, config)

    # --- the undo steps, shared by a failed run and by remove -----------------------------------------------

    async def _teardown_network(self, request: PodNetworkRequest | None) -> None:
        """Detach the pod from the pod network (idempotent; works with the netns already gone)."""
        if request is None or self.network is None:
            return
        if request.netns and not await asyncio.to_thread(Path(request.netns).exists):
            request = dataclasses.replace(request, netns="")
        await self.network.teardown(request)

    async def _unmount_shm(self, shm: Path) -> None:
        await unmount(shm)

    async def _remove_pod_init(self, ref: ProcessRef | None, pin: Path, pod_cgroup: str | None, sandbox_id: str
                               ) -> None:
        """Kill the pod's PID 1 (every process of its PID namespace dies with it), unpin, remove its cgroup leaf.
        A PID 1 that no record names is found through the pin."""
        if ref is None:
            ref = await asyncio.to_thread(find_pod_init, pin)
        await stop_pod_init(ref)
        await remove_pid_pin(pin)
        if pod_cgroup is not None:
            await self.cgroups.remove_leaf(self.cgroups.layout.leaf(pod_cgroup, sandbox_id))

    def _netns_name(self, sandbox_id: str) -> Path:
        """The pod's `ip netns` name (`[network] netns_dir`)."""
        return Path(self.netns_dir) / f"crisp-{sandbox_id}"

    async def _unpin(self, pins: tuple[Path, ...]) -> None:
        await unpin_namespaces(pins)

    async def _remove_cgroup(self, path: str) -> None:
        await self.cgroups.remove_pod_cgroup(path)

    async def _remove_dir(self, pod_dir: Path) -> None:
        await asyncio.to_thread(remove_tree, pod_dir, True)
