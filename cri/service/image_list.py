"""ListImages: every image, or the one the filter names, as the CRI shows them."""

from __future__ import annotations

from cri import api as cri
from cri.service.context import ServiceContext
from cri.service.images import cri_image


async def list_images(ctx: ServiceContext, request: cri.ListImagesRequest) -> cri.ListImagesResponse:
    wanted = request.filter.image.image if request.HasField("filter") else ""
    if wanted:
        record = await ctx.images.find(wanted)
        records = [] if record is None else [record]
    else:
        records = await ctx.images.list_images()
    return cri.ListImagesResponse(images=[cri_image(r) for r in records])
