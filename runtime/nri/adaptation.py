"""The runtime side of NRI: the plugins crisp talks to, and the events of pods and containers relayed to them.

Plugins are launched from the plugin directory at start (launch.py) or connect to the NRI socket; either way each
registers, is configured and is synchronized (under the SyncLock, so that no container creation slips between the
list it is sent and the events it gets), then joins the others, called in index order (then by name).

Events that can stop the thing they announce (RunPodSandbox, UpdatePodSandbox, CreateContainer, StartContainer,
UpdateContainer) fail the RPC when a plugin answers with an error; the others (Post*, Stop*, Remove*) are told
after the fact: a plugin's error there is logged. A plugin that is gone or times out is dropped either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.nri import api, launch, schema
from runtime.nri.plugin import Plugin, PluginError, Timeouts, UpdateFn
from runtime.nri.result import CreateResult, UpdateSet
from runtime.nri.synclock import SyncLock

log = logging.getLogger(__name__)

SyncFn = Callable[[], Awaitable[tuple[list[Any], list[Any]]]]  # the runtime's pods and containers, as NRI objects


@dataclass(frozen=True)
class Settings:
    socket_path: Path
    plugin_path: Path
    plugin_config_path: Path
    timeouts: Timeouts = field(default_factory=Timeouts)
    accept_connections: bool = True


class Adaptation:
    def __init__(self, settings: Settings, runtime_name: str, runtime_version: str, sync: SyncFn,
                 update: UpdateFn) -> None:
        self.settings = settings
        self.runtime_name, self.runtime_version = runtime_name, runtime_version
        self._sync = sync
        self._update = update
        self._plugins: list[Plugin] = []
        self._server: asyncio.Server | None = None
        self._joining: set[asyncio.Task[None]] = set()
        self.lock = SyncLock()

    # ------------------------------------------------------------------ plugins

    async def start(self) -> None:
        """Launch the pre-installed plugins (one that fails is logged and left out), then listen for others."""
        for installed in launch.discover(self.settings.plugin_path, self.settings.plugin_config_path):
            try:
                reader, writer, process = await launch.launch(installed)
            except OSError as exc:
                log.warning("NRI plugin %s: cannot start %s: %s", installed.full_name, installed.path, exc)
                continue
            plugin = Plugin(reader, writer, self._update, installed.name, installed.idx, installed.config, process)
            await self._join(plugin)
        if self.settings.accept_connections:
            path = self.settings.socket_path
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self._server = await asyncio.start_unix_server(self._accept, path=str(path))
            os.chmod(path, 0o600)
            log.info("NRI: accepting plugins on %s", path)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._joining.add(task)
        try:
            await self._join(Plugin(reader, writer, self._update))
        finally:
            self._joining.discard(task)

    async def _join(self, plugin: Plugin) -> None:
        timeouts = self.settings.timeouts
        try:
            await plugin.start(self.runtime_name, self.runtime_version, timeouts)
            async with self.lock.synchronization():
                pods, containers = await self._sync()
                updates = await plugin.synchronize(pods, containers, timeouts.synchronization)
                if updates:
                    failed = await self._update(updates)
                    if failed:
                        log.warning("NRI plugin %s: %d update(s) of its synchronization failed", plugin.full_name,
                                    len(failed))
                self._plugins.append(plugin)
                self._plugins.sort(key=lambda p: (p.idx, p.name))
        except (errors.CrispError, OSError) as exc:
            log.error("NRI plugin %s (%s, pid %d) could not join: %s", plugin.full_name, plugin.kind, plugin.pid, exc)
            await plugin.close()
            return
        log.info("NRI plugin %s (%s, pid %d) synchronized; events %s", plugin.full_name, plugin.kind, plugin.pid,
                 ", ".join(event_names(plugin.events)))

    def plugins(self) -> list[Plugin]:
        """The plugins in call order, without those whose connection is gone."""
        self._plugins = [p for p in self._plugins if not p.closed]
        return list(self._plugins)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.settings.socket_path.unlink()
        for task in list(self._joining):
            task.cancel()
        for plugin in self._plugins:
            await plugin.close()
        self._plugins = []

    def status(self) -> dict[str, Any]:
        return {
            "socket": str(self.settings.socket_path) if self.settings.accept_connections else "",
            "plugins": [{"name": p.full_name, "kind": p.kind, "pid": p.pid, "events": event_names(p.events)}
                        for p in self.plugins()],
        }

    @contextlib.asynccontextmanager
    async def creation(self) -> AsyncIterator[None]:
        """Hold while creating a container, from its CreateContainer event until it is in the store."""
        async with self.lock.creation():
            yield

    # ------------------------------------------------------------------ events

    async def _relay(self, event: int, method: str, request: Any, response_type: Any, veto: bool) -> list[
            tuple[Plugin, Any]]:
        answers = []
        for plugin in self.plugins():
            if not plugin.subscribed(event):
                continue
            try:
                reply = await plugin.call(method, request, response_type, self.settings.timeouts.request)
            except PluginError as exc:
                if veto:
                    raise
                log.warning("%s", exc)
                continue
            if reply is not None:
                answers.append((plugin, reply))
        return answers

    async def run_pod_sandbox(self, pod: Any) -> None:
        await self._relay(api.RUN_POD_SANDBOX, "RunPodSandbox", api.RunPodSandboxRequest(pod=pod),
                          api.RunPodSandboxResponse, veto=True)

    async def update_pod_sandbox(self, pod: Any, overhead: Any, resources: Any) -> None:
        request = api.UpdatePodSandboxRequest(pod=pod, overhead_linux_resources=overhead, linux_resources=resources)
        await self._relay(api.UPDATE_POD_SANDBOX, "UpdatePodSandbox", request, api.UpdatePodSandboxResponse, True)

    async def post_update_pod_sandbox(self, pod: Any) -> None:
        await self._relay(api.POST_UPDATE_POD_SANDBOX, "PostUpdatePodSandbox", api.PostUpdatePodSandboxRequest(
            pod=pod), api.PostUpdatePodSandboxResponse, veto=False)

    async def stop_pod_sandbox(self, pod: Any) -> None:
        await self._relay(api.STOP_POD_SANDBOX, "StopPodSandbox", api.StopPodSandboxRequest(pod=pod),
                          api.StopPodSandboxResponse, veto=False)

    async def remove_pod_sandbox(self, pod: Any) -> None:
        await self._relay(api.REMOVE_POD_SANDBOX, "RemovePodSandbox", api.RemovePodSandboxRequest(pod=pod),
                          api.RemovePodSandboxResponse, veto=False)

    async def create_container(self, pod: Any, container: Any) -> Any:
        """The merged CreateContainerResponse: the adjustment to apply and updates of other containers. A conflict
        between plugins, a plugin's error or a validator's rejection fails it."""
        pristine = api.Container()
        pristine.CopyFrom(container)
        request = api.CreateContainerRequest(pod=pod, container=container)
        result = CreateResult(request)
        consulted = []
        for plugin in self.plugins():
            consulted.append(api.PluginInstance(name=plugin.name, index=plugin.idx))
            if not plugin.subscribed(api.CREATE_CONTAINER):
                continue
            reply = await plugin.call("CreateContainer", request, api.CreateContainerResponse,
                                      self.settings.timeouts.request)
            result.apply(reply, plugin.full_name)
        response = result.response()
        validators = [p for p in self.plugins() if p.subscribed(api.VALIDATE_CONTAINER_ADJUSTMENT)]
        if validators:
            validate = api.ValidateContainerAdjustmentRequest(
                pod=pod, container=pristine, adjust=response.adjust, update=response.update,
                owners=result.owners.to_proto(), plugins=consulted)
            verdicts = await asyncio.gather(*(p.call("ValidateContainerAdjustment", validate,
                                                     api.ValidateContainerAdjustmentResponse,
                                                     self.settings.timeouts.request) for p in validators))
            for plugin, verdict in zip(validators, verdicts, strict=True):
                if verdict is not None and verdict.reject:
                    raise PluginError(f"validator {plugin.full_name} rejected the adjustment of container "
                                      f"{container.id}: {verdict.reason or 'no reason given'}")
        return response

    async def post_create_container(self, pod: Any, container: Any) -> None:
        await self._relay(api.POST_CREATE_CONTAINER, "PostCreateContainer", api.PostCreateContainerRequest(
            pod=pod, container=container), api.PostCreateContainerResponse, veto=False)

    async def start_container(self, pod: Any, container: Any) -> None:
        await self._relay(api.START_CONTAINER, "StartContainer", api.StartContainerRequest(
            pod=pod, container=container), api.StartContainerResponse, veto=True)

    async def post_start_container(self, pod: Any, container: Any) -> None:
        await self._relay(api.POST_START_CONTAINER, "PostStartContainer", api.PostStartContainerRequest(
            pod=pod, container=container), api.PostStartContainerResponse, veto=False)

    async def update_container(self, pod: Any, container: Any, resources: Any) -> tuple[Any, list[Any]]:
        """(the resources to apply to this container, updates of other containers) after the plugins had their
        say."""
        requested = api.ContainerUpdate(container_id=container.id)
        requested.linux.resources.CopyFrom(resources)
        updates = UpdateSet(requested=requested)
        request = api.UpdateContainerRequest(pod=pod, container=container, linux_resources=resources)
        for plugin, reply in await self._relay(api.UPDATE_CONTAINER, "UpdateContainer", request,
                                               api.UpdateContainerResponse, veto=True):
            if reply.evict:
                raise errors.Unimplemented(f"NRI plugin {plugin.full_name}: container eviction is not supported")
            updates.add(reply.update, plugin.full_name)
        merged = updates.by_container.pop(container.id)
        return merged.linux.resources, updates.merged()

    async def post_update_container(self, pod: Any, container: Any) -> None:
        await self._relay(api.POST_UPDATE_CONTAINER, "PostUpdateContainer", api.PostUpdateContainerRequest(
            pod=pod, container=container), api.PostUpdateContainerResponse, veto=False)

    async def stop_container(self, pod: Any, container: Any) -> list[Any]:
        """Updates of other containers the plugins ask for once this one stopped."""
        updates = UpdateSet()
        for plugin, reply in await self._relay(api.STOP_CONTAINER, "StopContainer", api.StopContainerRequest(
                pod=pod, container=container), api.StopContainerResponse, veto=False):
            try:
                updates.add(reply.update, plugin.full_name)
            except errors.CrispError as exc:
                log.warning("NRI plugin %s: updates after container %s stopped: %s", plugin.full_name,
                            container.id, exc)
        return updates.merged()

    async def remove_container(self, pod: Any, container: Any) -> None:
        await self._relay(api.REMOVE_CONTAINER, "RemoveContainer", api.RemoveContainerRequest(
            pod=pod, container=container), api.RemoveContainerResponse, veto=False)


def event_names(mask: int) -> list[str]:
    return [name for number, name in enumerate(schema.EVENTS) if 0 < number < len(schema.EVENTS) - 1
            and api.mask_has(mask, number)]
