"""RemoveImage."""

from __future__ import annotations

from cri import api as cri
from cri.service.context import ServiceContext
from runtime import errors


async def remove_image(ctx: ServiceContext, request: cri.RemoveImageRequest) -> cri.RemoveImageResponse:
    if not request.image.image:
        raise errors.InvalidArgument("RemoveImage: no image given")
    # removing an image that is not there is OK (idempotent, as the kubelet expects)
    await ctx.images.remove(request.image.image)
    return cri.RemoveImageResponse()
