"""ImageFsInfo: what the image store uses on its filesystem."""

from __future__ import annotations

from cri import api as cri
from cri.service.context import ServiceContext


async def image_fs_info(ctx: ServiceContext, request: cri.ImageFsInfoRequest) -> cri.ImageFsInfoResponse:
    used, inodes = await ctx.images.fs_usage()
    usage = cri.FilesystemUsage(
        timestamp=ctx.clock_ns(),
        # the image store's dir, as containerd reports its snapshotter's: the kubelet resolves it to its device
        fs_id=cri.FilesystemIdentifier(mountpoint=str(ctx.images.root)),
        used_bytes=cri.UInt64Value(value=used),
        inodes_used=cri.UInt64Value(value=inodes),
    )
    return cri.ImageFsInfoResponse(image_filesystems=[usage])
