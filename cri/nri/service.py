"""NRI in crispd: the pod-sandbox and container controllers (cri/lifecycle) and CreateContainer call these at
fixed points; with `[nri] enable = false` every call is a no-op.

Where the events happen (the order critest checks):
  RunPodSandbox     the pod is made (network included) but not yet recorded: invisible until the plugins agree; an
                    error fails the RPC and the rollback leaves nothing.
  StopPodSandbox    once per pod (when it leaves READY), after its containers are stopped, before its network goes.
  RemovePodSandbox  after the pod is gone.
  CreateContainer   its spec is built (CDI devices injected), not yet written: the plugins' merged adjustment is
                    applied to it (their CDI devices too); the container is recorded only after. Creations hold the
                    sync lock, so a plugin joining meanwhile misses none.
  StartContainer    once the container is made (StartContainer makes it: its pid is known), before the start (an
                    error fails it); PostStart after.
  StopContainer     once per container, when its exit is recorded: by StopContainer, when it exits by itself, or
                    when StartContainer failed to make it (StartError).
                    StopContainer and RemoveContainer wait for it, so Remove never overtakes Stop.
  RemoveContainer   after the container is gone.
  UpdateContainer   UpdateContainerResources: the plugins may amend the resources (then PostUpdate).
Updates plugins ask for (UpdateContainers, or in an answer) are applied to running or created containers, each
under its container's lock (cri/lifecycle/limits.py); the ones that fail come back to the plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cri import api as cri
from cri.cdi import CdiConfig, inject_devices
from cri.lifecycle.limits import ContainerLimits
from cri.nri import convert
from cri.nri.config import NriConfig
from cri.store.containers import Container, ContainerStore
from cri.store.sandboxes import Sandbox, SandboxStore
from runtime import errors
from runtime.namespaces.sysctl import check_sysctls, pod_host_namespaces
from runtime.nri import api
from runtime.nri.adaptation import Adaptation, Settings
from runtime.nri.oci_adjust import apply_adjustment
from runtime.nri.plugin import Timeouts
from runtime.version import RUNTIME_NAME, VERSION

log = logging.getLogger(__name__)


class NriService:
    def __init__(self, *, config: NriConfig, cdi: CdiConfig, sandboxes: SandboxStore, containers: ContainerStore,
                 limits: ContainerLimits) -> None:
        self.config = config
        self.cdi = cdi
        self.sandboxes = sandboxes
        self.containers = containers
        self.limits = limits
        # made by `start` when NRI is enabled
        self.adaptation: Adaptation | None = None
        self._stop_events: dict[str, asyncio.Event] = {}

    # ------------------------------------------------------------------ lifetime

    async def start(self) -> None:
        """With NRI enabled: start the pre-installed plugins and listen for others (after recovery)."""
        if not self.config.enable:
            return
        c = self.config
        settings = Settings(Path(c.socket_path), Path(c.plugin_path), Path(c.plugin_config_path),
                            Timeouts(c.plugin_registration_timeout_seconds, c.plugin_request_timeout_seconds,
                                     c.plugin_sync_timeout_seconds),
                            accept_connections=not c.disable_connections)
        adaptation = Adaptation(settings, RUNTIME_NAME, VERSION, self._synchronize, self._apply_updates)
        try:
            await adaptation.start()
        except OSError as exc:
            await adaptation.stop()
            raise errors.Unavailable(f"NRI: cannot listen on {c.socket_path}: {exc.strerror or exc}") from None
        self.adaptation = adaptation

    async def stop(self) -> None:
        if self.adaptation is not None:
            await self.adaptation.stop()
            self.adaptation = None

    def status(self) -> dict[str, Any]:
        if self.adaptation is None:
            return {"enabled": False}
        return {"enabled": True, **self.adaptation.status()}

    @contextlib.asynccontextmanager
    async def creation(self) -> AsyncIterator[None]:
        if self.adaptation is None:
            yield
            return
        async with self.adaptation.creation():
            yield

    # ------------------------------------------------------------------ the runtime's side of synchronization

    async def _synchronize(self) -> tuple[list[Any], list[Any]]:
        return ([convert.pod_sandbox(s) for s in self.sandboxes.all()],
                [convert.container(c) for c in self.containers.all()])

    async def _apply_updates(self, updates: list[Any]) -> list[Any]:
        failed = []
        for update in updates:
            container = self.containers.find(update.container_id)
            try:
                if container is None:
                    raise errors.NotFound(f"container {update.container_id} does not exist")
                # checked before the lock too: the container StopContainer is stopping holds its lock until the
                # plugins have heard of the stop, and an update of it is refused anyway
                self.limits.check(container)
                base = (cri.LinuxContainerResources.FromString(bytes.fromhex(container.status.resources))
                        if container.status.resources else None)
                await self.limits.update(container, convert.cri_resources(update.linux.resources, base))
            except errors.CrispError as exc:
                log.warning("NRI update of container %s failed: %s", update.container_id, exc)
                failed.append(update)
        return failed

    async def _updates(self, updates: list[Any], what: str) -> None:
        failed = await self._apply_updates(updates) if updates else []
        if [u for u in failed if not u.ignore_failure]:
            raise errors.FailedPrecondition(f"{what}: NRI plugins asked for container updates that failed: "
                                            + ", ".join(u.container_id for u in failed))

    def _pod_of(self, container: Container) -> Any:
        sandbox = self.sandboxes.find(container.meta.sandbox_id)
        return convert.pod_sandbox(sandbox) if sandbox is not None else api.PodSandbox(id=container.meta.sandbox_id)

    # ------------------------------------------------------------------ pods

    async def run_pod_sandbox(self, sandbox: Sandbox) -> None:
        if self.adaptation is not None:
            await self.adaptation.run_pod_sandbox(convert.pod_sandbox(sandbox))

    async def update_pod_sandbox(self, sandbox: Sandbox, resources: cri.LinuxContainerResources) -> None:
        if self.adaptation is not None:
            pod = convert.pod_sandbox(sandbox)
            await self.adaptation.update_pod_sandbox(pod, pod.linux.pod_overhead, convert.nri_resources(resources))

    async def post_update_pod_sandbox(self, sandbox: Sandbox) -> None:
        if self.adaptation is not None:
            await self.adaptation.post_update_pod_sandbox(convert.pod_sandbox(sandbox))

    async def stop_pod_sandbox(self, sandbox: Sandbox) -> None:
        if self.adaptation is not None:
            await self.adaptation.stop_pod_sandbox(convert.pod_sandbox(sandbox))

    async def remove_pod_sandbox(self, sandbox: Sandbox) -> None:
        if self.adaptation is not None:
            await self.adaptation.remove_pod_sandbox(convert.pod_sandbox(sandbox))

    # ------------------------------------------------------------------ containers

    async def create_container(self, sandbox: Sandbox, container_id: str, config: cri.ContainerConfig,
                               spec: dict[str, Any], created_at: int) -> Any | None:
        """Let the plugins adjust the new container's spec (in place); returns the container as they saw it (for
        `abandon_container` if the creation fails later)."""
        if self.adaptation is None:
            return None
        nri_container = convert.creating_container(container_id, sandbox.id, config, spec, created_at)
        response = await self.adaptation.create_container(convert.pod_sandbox(sandbox), nri_container)
        cdi_devices = apply_adjustment(spec, response.adjust)
        if cdi_devices:
            await asyncio.to_thread(inject_devices, self.cdi, spec, cdi_devices)
        if response.adjust.linux.sysctl:
            shared = pod_host_namespaces(host_network=sandbox.meta.host_network, host_ipc=sandbox.meta.host_ipc)
            check_sysctls(spec["linux"].get("sysctl", {}), shared, who=f"container {container_id}")
        await self._updates(list(response.update), f"container {container_id}")
        return nri_container

    async def abandon_container(self, sandbox: Sandbox, nri_container: Any | None) -> None:
        """A creation the plugins adjusted failed after all: they hear the container is removed."""
        if self.adaptation is not None and nri_container is not None:
            await self.adaptation.remove_container(convert.pod_sandbox(sandbox), nri_container)

    async def post_create_container(self, container: Container) -> None:
        if self.adaptation is not None:
            await self.adaptation.post_create_container(self._pod_of(container), convert.container(container))

    async def start_container(self, container: Container) -> None:
        if self.adaptation is not None:
            await self.adaptation.start_container(self._pod_of(container), convert.container(container))

    async def post_start_container(self, container: Container) -> None:
        if self.adaptation is not None:
            await self.adaptation.post_start_container(self._pod_of(container), convert.container(container))

    async def update_container(self, container: Container, resources: cri.LinuxContainerResources
                               ) -> cri.LinuxContainerResources:
        """The resources to apply, as the plugins leave them; their updates of other containers are applied."""
        if self.adaptation is None:
            return resources
        merged, others = await self.adaptation.update_container(
            self._pod_of(container), convert.container(container), convert.nri_resources(resources))
        await self._updates(others, f"container {container.id}")
        return convert.cri_resources(merged, resources)

    async def post_update_container(self, container: Container) -> None:
        if self.adaptation is not None:
            await self.adaptation.post_update_container(self._pod_of(container), convert.container(container))

    async def container_stopped(self, container: Container) -> None:
        """Its exit was just recorded: tell the plugins once; StopContainer/RemoveContainer wait for this."""
        if self.adaptation is None:
            return
        done = self._stop_events.setdefault(container.id, asyncio.Event())
        try:
            updates = await self.adaptation.stop_container(self._pod_of(container), convert.container(container))
            with contextlib.suppress(errors.CrispError):
                await self._updates(updates, f"after container {container.id} stopped")
        finally:
            done.set()

    async def wait_stopped(self, container_id: str) -> None:
        event = self._stop_events.get(container_id)
        if event is not None:
            await event.wait()

    async def remove_container(self, container: Container) -> None:
        await self.wait_stopped(container.id)
        self._stop_events.pop(container.id, None)
        if self.adaptation is not None:
            await self.adaptation.remove_container(self._pod_of(container), convert.container(container))
