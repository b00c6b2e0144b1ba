"""The CRI v1 RuntimeService and ImageService servicers.

Each RPC's logic lives in its group's module (`runtime_info.py`, ...); the servicers only route to it. Every RPC
without an implementation raises `Unimplemented`, which the interceptor turns into UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc as cri_grpc

from cri.service import image_fsinfo, image_pull, image_remove, image_status, runtime_info
from cri.service.context import ServiceContext
from runtime import errors


def _unimplemented(service: str, method: str) -> Callable[..., Any]:
    async def rpc(self: Any, request: Any, context: Any) -> Any:
        raise errors.Unimplemented(f"{service}.{method} is not implemented by crisp yet")

    rpc.__name__ = method
    return rpc


def _fill_unimplemented(cls: type, service: str) -> None:
    for method in cri.DESCRIPTOR.services_by_name[service].methods:
        if method.name not in cls.__dict__:
            setattr(cls, method.name, _unimplemented(service, method.name))


class RuntimeService(cri_grpc.RuntimeServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def Version(self, request: cri.VersionRequest, context: Any) -> cri.VersionResponse:
        return await runtime_info.version(self.ctx, request)

    async def Status(self, request: cri.StatusRequest, context: Any) -> cri.StatusResponse:
        return await runtime_info.status(self.ctx, request)

    async def RuntimeConfig(self, request: cri.RuntimeConfigRequest, context: Any) -> cri.RuntimeConfigResponse:
        return await runtime_info.runtime_config(self.ctx, request)

    async def UpdateRuntimeConfig(
        self, request: cri.UpdateRuntimeConfigRequest, context: Any
    ) -> cri.UpdateRuntimeConfigResponse:
        return await runtime_info.update_runtime_config(self.ctx, request)


class ImageService(cri_grpc.ImageServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def ListImages(self, request: cri.ListImagesRequest, context: Any) -> cri.ListImagesResponse:
        return await image_status.list_images(self.ctx, request)

    async def ImageStatus(self, request: cri.ImageStatusRequest, context: Any) -> cri.ImageStatusResponse:
        return await image_status.image_status(self.ctx, request)

    async def PullImage(self, request: cri.PullImageRequest, context: Any) -> cri.PullImageResponse:
        return await image_pull.pull_image(self.ctx, request)

    async def RemoveImage(self, request: cri.RemoveImageRequest, context: Any) -> cri.RemoveImageResponse:
        return await image_remove.remove_image(self.ctx, request)

    async def ImageFsInfo(self, request: cri.ImageFsInfoRequest, context: Any) -> cri.ImageFsInfoResponse:
        return await image_fsinfo.image_fs_info(self.ctx, request)


_fill_unimplemented(RuntimeService, "RuntimeService")
_fill_unimplemented(ImageService, "ImageService")


def add_servicers(server: Any, ctx: ServiceContext) -> None:
    cri_grpc.add_RuntimeServiceServicer_to_server(RuntimeService(ctx), server)  # type: ignore[no-untyped-call]
    cri_grpc.add_ImageServiceServicer_to_server(ImageService(ctx), server)  # type: ignore[no-untyped-call]
