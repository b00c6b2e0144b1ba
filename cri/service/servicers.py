"""The CRI v1 RuntimeService and ImageService servicers.

The index of every RPC: each one lives in the module named after it, object first (RunPodSandbox in
`sandbox_run.py`, ExecSync in `container_exec_sync.py`, ListContainerStats in `container_stats_list.py`, Version in
`runtime_version.py`); the servicers only route to it. The Stream* RPCs page a List RPC's answer, here. Every RPC
without an implementation raises `Unimplemented`, which the guard (cri/server.py) turns into UNIMPLEMENTED. What the RPC
modules share lives outside them: the context (`context.py`), the controllers (cri/lifecycle), the status and
usage messages (cri/status.py, cri/usage.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from cri import api as cri
from cri.rpcserver import Method, Server
from cri.service import (
    container_attach,
    container_checkpoint,
    container_create,
    container_events,
    container_exec,
    container_exec_sync,
    container_list,
    container_remove,
    container_reopen_log,
    container_start,
    container_stats,
    container_stats_list,
    container_status,
    container_stop,
    container_update_resources,
    image_fsinfo,
    image_list,
    image_pull,
    image_remove,
    image_status,
    metric_descriptors_list,
    runtime_config,
    runtime_config_update,
    runtime_status,
    runtime_version,
    sandbox_list,
    sandbox_metrics_list,
    sandbox_port_forward,
    sandbox_remove,
    sandbox_run,
    sandbox_stats,
    sandbox_stats_list,
    sandbox_status,
    sandbox_stop,
    sandbox_update_resources,
)
from cri.service.context import ServiceContext
from runtime import errors


def _unimplemented(service: str, method: str) -> Callable[..., Any]:
    async def rpc(request: Any, context: Any) -> Any:
        raise errors.Unimplemented(f"{service}.{method} is not implemented by crisp yet")

    rpc.__name__ = method
    return rpc


class RuntimeService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def Version(self, request: cri.VersionRequest, context: Any) -> cri.VersionResponse:
        return await runtime_version.version(self.ctx, request)

    async def Status(self, request: cri.StatusRequest, context: Any) -> cri.StatusResponse:
        return await runtime_status.status(self.ctx, request)

    async def RuntimeConfig(self, request: cri.RuntimeConfigRequest, context: Any) -> cri.RuntimeConfigResponse:
        return await runtime_config.runtime_config(self.ctx, request)

    async def UpdateRuntimeConfig(
        self, request: cri.UpdateRuntimeConfigRequest, context: Any
    ) -> cri.UpdateRuntimeConfigResponse:
        return await runtime_config_update.update_runtime_config(self.ctx, request)


    async def RunPodSandbox(self, request: cri.RunPodSandboxRequest, context: Any) -> cri.RunPodSandboxResponse:
        return await sandbox_run.run_pod_sandbox(self.ctx, request, context)

    async def StopPodSandbox(self, request: cri.StopPodSandboxRequest, context: Any) -> cri.StopPodSandboxResponse:
        return await sandbox_stop.stop_pod_sandbox(self.ctx, request)

    async def RemovePodSandbox(self, request: cri.RemovePodSandboxRequest, context: Any
                               ) -> cri.RemovePodSandboxResponse:
        return await sandbox_remove.remove_pod_sandbox(self.ctx, request)

    async def PodSandboxStatus(self, request: cri.PodSandboxStatusRequest, context: Any
                               ) -> cri.PodSandboxStatusResponse:
        return await sandbox_status.pod_sandbox_status(self.ctx, request)

    async def ListPodSandbox(self, request: cri.ListPodSandboxRequest, context: Any) -> cri.ListPodSandboxResponse:
        return await sandbox_list.list_pod_sandbox(self.ctx, request)


    async def CreateContainer(self, request: cri.CreateContainerRequest, context: Any
                              ) -> cri.CreateContainerResponse:
        return await container_create.create_container(self.ctx, request, context)

    async def StartContainer(self, request: cri.StartContainerRequest, context: Any) -> cri.StartContainerResponse:
        return await container_start.start_container(self.ctx, request)

    async def StopContainer(self, request: cri.StopContainerRequest, context: Any) -> cri.StopContainerResponse:
        return await container_stop.stop_container(self.ctx, request)

    async def RemoveContainer(self, request: cri.RemoveContainerRequest, context: Any
                              ) -> cri.RemoveContainerResponse:
        return await container_remove.remove_container(self.ctx, request)

    async def ContainerStatus(self, request: cri.ContainerStatusRequest, context: Any
                              ) -> cri.ContainerStatusResponse:
        return await container_status.container_status_rpc(self.ctx, request)

    async def ListContainers(self, request: cri.ListContainersRequest, context: Any) -> cri.ListContainersResponse:
        return await container_list.list_containers(self.ctx, request)

    async def UpdateContainerResources(self, request: cri.UpdateContainerResourcesRequest, context: Any
                                       ) -> cri.UpdateContainerResourcesResponse:
        return await container_update_resources.update_container_resources(self.ctx, request)

    async def UpdatePodSandboxResources(self, request: cri.UpdatePodSandboxResourcesRequest, context: Any
                                        ) -> cri.UpdatePodSandboxResourcesResponse:
        return await sandbox_update_resources.update_pod_sandbox_resources(self.ctx, request)

    async def ReopenContainerLog(self, request: cri.ReopenContainerLogRequest, context: Any
                                 ) -> cri.ReopenContainerLogResponse:
        return await container_reopen_log.reopen_container_log(self.ctx, request)

    async def CheckpointContainer(self, request: cri.CheckpointContainerRequest, context: Any
                                  ) -> cri.CheckpointContainerResponse:
        return await container_checkpoint.checkpoint_container(self.ctx, request)

    async def ExecSync(self, request: cri.ExecSyncRequest, context: Any) -> cri.ExecSyncResponse:
        return await container_exec_sync.exec_sync(self.ctx, request)

    async def Exec(self, request: cri.ExecRequest, context: Any) -> cri.ExecResponse:
        return await container_exec.exec_rpc(self.ctx, request)

    async def Attach(self, request: cri.AttachRequest, context: Any) -> cri.AttachResponse:
        return await container_attach.attach(self.ctx, request)

    async def PortForward(self, request: cri.PortForwardRequest, context: Any) -> cri.PortForwardResponse:
        return await sandbox_port_forward.port_forward(self.ctx, request)
    async def ContainerStats(self, request: cri.ContainerStatsRequest, context: Any) -> cri.ContainerStatsResponse:
        return await container_stats.container_stats(self.ctx, request)

    async def ListContainerStats(self, request: cri.ListContainerStatsRequest, context: Any
                                 ) -> cri.ListContainerStatsResponse:
        return await container_stats_list.list_container_stats(self.ctx, request)

    async def PodSandboxStats(self, request: cri.PodSandboxStatsRequest, context: Any
                              ) -> cri.PodSandboxStatsResponse:
        return await sandbox_stats.pod_sandbox_stats(self.ctx, request)

    async def ListPodSandboxStats(self, request: cri.ListPodSandboxStatsRequest, context: Any
                                  ) -> cri.ListPodSandboxStatsResponse:
        return await sandbox_stats_list.list_pod_sandbox_stats(self.ctx, request)

    async def ListMetricDescriptors(self, request: cri.ListMetricDescriptorsRequest, context: Any
                                    ) -> cri.ListMetricDescriptorsResponse:
        return await metric_descriptors_list.list_metric_descriptors(self.ctx, request)

    async def ListPodSandboxMetrics(self, request: cri.ListPodSandboxMetricsRequest, context: Any
                                    ) -> cri.ListPodSandboxMetricsResponse:
        return await sandbox_metrics_list.list_pod_sandbox_metrics(self.ctx, request)

    async def GetContainerEvents(self, request: cri.GetEventsRequest, context: Any) -> None:
        await container_events.get_container_events(self.ctx, request, context)

    # The Stream* RPCs (the kubelet's CRIListStreaming feature): a List call's answer in pages, so that no single
    # message approaches the client's size limit.
    async def StreamPodSandboxes(self, request: Any, context: Any) -> AsyncIterator[Any]:
        listed = await sandbox_list.list_pod_sandbox(self.ctx, cri.ListPodSandboxRequest(filter=request.filter))
        for page in _pages(listed.items):
            yield cri.StreamPodSandboxesResponse(pod_sandboxes=page)

    async def StreamContainers(self, request: Any, context: Any) -> AsyncIterator[Any]:
        listed = await container_list.list_containers(self.ctx, cri.ListContainersRequest(filter=request.filter))
        for page in _pages(listed.containers):
            yield cri.StreamContainersResponse(containers=page)

    async def StreamContainerStats(self, request: Any, context: Any) -> AsyncIterator[Any]:
        listed = await container_stats_list.list_container_stats(
            self.ctx, cri.ListContainerStatsRequest(filter=request.filter))
        for page in _pages(listed.stats):
            yield cri.StreamContainerStatsResponse(container_stats=page)

    async def StreamPodSandboxStats(self, request: Any, context: Any) -> AsyncIterator[Any]:
        listed = await sandbox_stats_list.list_pod_sandbox_stats(
            self.ctx, cri.ListPodSandboxStatsRequest(filter=request.filter))
        for page in _pages(listed.stats):
            yield cri.StreamPodSandboxStatsResponse(pod_sandbox_stats=page)

    async def StreamPodSandboxMetrics(self, request: Any, context: Any) -> AsyncIterator[Any]:
        listed = await sandbox_metrics_list.list_pod_sandbox_metrics(self.ctx, cri.ListPodSandboxMetricsRequest())
        for page in _pages(listed.pod_metrics):
            yield cri.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=page)


class ImageService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def ListImages(self, request: cri.ListImagesRequest, context: Any) -> cri.ListImagesResponse:
        return await image_list.list_images(self.ctx, request)

    async def ImageStatus(self, request: cri.ImageStatusRequest, context: Any) -> cri.ImageStatusResponse:
        return await image_status.image_status(self.ctx, request)

    async def PullImage(self, request: cri.PullImageRequest, context: Any) -> cri.PullImageResponse:
        return await image_pull.pull_image(self.ctx, request)

    async def RemoveImage(self, request: cri.RemoveImageRequest, context: Any) -> cri.RemoveImageResponse:
        return await image_remove.remove_image(self.ctx, request)

    async def ImageFsInfo(self, request: cri.ImageFsInfoRequest, context: Any) -> cri.ImageFsInfoResponse:
        return await image_fsinfo.image_fs_info(self.ctx, request)

    async def StreamImages(self, request: Any, context: Any) -> AsyncIterator[Any]:
        listed = await image_list.list_images(self.ctx, cri.ListImagesRequest(filter=request.filter))
        for page in _pages(listed.images):
            yield cri.StreamImagesResponse(images=page)


_PAGE = 256


def _pages(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _PAGE):
        yield items[start:start + _PAGE]


def add_servicers(server: Server, ctx: ServiceContext, wrap: Callable[[Method], Method] | None = None) -> None:
    """Both services on `server` (cri/rpcserver.py), each method passed through `wrap` (the daemon's RpcGuard.wrap)."""
    server.add(cri.service_methods("RuntimeService", RuntimeService(ctx), _unimplemented, wrap))
    server.add(cri.service_methods("ImageService", ImageService(ctx), _unimplemented, wrap))
