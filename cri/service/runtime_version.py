"""Version: crisp's name and version, and the CRI API it speaks."""

from __future__ import annotations

from cri import api as cri
from cri.service.context import ServiceContext
from runtime.version import RUNTIME_NAME, VERSION

# the CRI's own Version RPC version field is the kubelet-facing API version, kept at 0.1.0 by every runtime
KUBELET_API_VERSION = "0.1.0"


async def version(ctx: ServiceContext, request: cri.VersionRequest) -> cri.VersionResponse:
    return cri.VersionResponse(
        version=KUBELET_API_VERSION,
        runtime_name=RUNTIME_NAME,
        runtime_version=VERSION,
        runtime_api_version=cri.RUNTIME_API_VERSION,
    )
