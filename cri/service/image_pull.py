"""PullImage."""

from __future__ import annotations

import time

from cri import api as cri
from cri.service.context import ServiceContext
from runtime import errors
from runtime.image.registry import Credentials


def credentials_from(auth: cri.AuthConfig) -> Credentials | None:
    """The CRI AuthConfig as registry credentials (None when it carries nothing)."""
    return Credentials.from_auth(
        username=auth.username, password=auth.password, auth=auth.auth, identity_token=auth.identity_token,
        registry_token=auth.registry_token, server=auth.server_address,
    )


async def pull_image(ctx: ServiceContext, request: cri.PullImageRequest) -> cri.PullImageResponse:
    if not request.image.image:
        raise errors.InvalidArgument("PullImage: no image given")
    started = time.monotonic()
    try:
        record = await ctx.images.pull(request.image.image, credentials_from(request.auth))
    except BaseException as exc:
        ctx.metrics.observe_image_pull(time.monotonic() - started, exc)
        raise
    ctx.metrics.observe_image_pull(time.monotonic() - started, None)
    # CRI v1: the image_ref of a pull is the image id, as Image.id and a container's image_id
    return cri.PullImageResponse(image_ref=record.id)
