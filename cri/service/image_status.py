"""ImageStatus: one image as the CRI shows it (verbose: crisp's own view of it as JSON); a missing image is an
empty answer."""

from __future__ import annotations

import json

from cri import api as cri
from cri.service.context import ServiceContext
from cri.service.images import ImageRecord, cri_image


def _verbose_info(record: ImageRecord) -> dict[str, str]:
    info = {
        "id": record.id,
        "chainIDs": list(record.chain_ids),
        "snapshots": list(record.snapshot_dirs),
        "manifestDigest": record.info.get("manifestDigest"),
        "resolvedDigest": record.info.get("resolvedDigest"),
        "platform": record.info.get("platform"),
        "imageSpec": record.config,
    }
    return {"info": json.dumps(info, sort_keys=True)}


async def image_status(ctx: ServiceContext, request: cri.ImageStatusRequest) -> cri.ImageStatusResponse:
    record = await ctx.images.find(request.image.image)
    if record is None:
        return cri.ImageStatusResponse()  # a missing image is an empty answer, not an error
    response = cri.ImageStatusResponse(image=cri_image(record))
    if request.verbose:
        response.info.update(_verbose_info(record))
    return response
