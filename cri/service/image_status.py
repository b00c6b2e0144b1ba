"""ImageStatus and ListImages: images as the CRI shows them."""

from __future__ import annotations

import json
import logging

from cri import api as cri
from cri.service.context import ServiceContext
from cri.service.images import ImageRecord

log = logging.getLogger(__name__)


def cri_image(record: ImageRecord) -> cri.Image:
    """An image record as a CRI Image; the config's user becomes `uid` (numeric) or `username`, as the CRI asks."""
    image = cri.Image(
        id=record.id,
        repo_tags=list(record.repo_tags),
        repo_digests=list(record.repo_digests),
        size=record.size,
        spec=cri.ImageSpec(image=record.id),
        pinned=False,
    )
    user = str(record.runtime_config.get("User") or "").split(":", 1)[0]
    if user.isdigit():
        image.uid.value = int(user)
    elif user:
        image.username = user
    return image


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


async def list_images(ctx: ServiceContext, request: cri.ListImagesRequest) -> cri.ListImagesResponse:
    wanted = request.filter.image.image if request.HasField("filter") else ""
    if wanted:
        record = await ctx.images.find(wanted)
        records = [] if record is None else [record]
    else:
        records = await ctx.images.list_images()
    return cri.ListImagesResponse(images=[cri_image(r) for r in records])
