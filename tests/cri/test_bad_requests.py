"""Requests a client should not send, against a real crispd: short image id prefixes, oversized labels and
annotations, relative log directories. Each gets a clear error (or, for a prefix that names nothing, nothing
happens) and leaves nothing behind."""

from __future__ import annotations

import grpc
import pytest

from cri import api as cri
from tests.cri.pods import Pods, pod_config

pytestmark = pytest.mark.root


def _rpc_error(fn: object, *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value


def _pull(pods: Pods, ref: str) -> str:
    return str(pods.daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)),
                                            timeout=60).image_ref)


def _ids(pods: Pods) -> set[str]:
    return {i.id for i in pods.daemon.images.ListImages(cri.ListImagesRequest()).images}


def _remove(pods: Pods, ref: str) -> None:
    pods.daemon.images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=ref)))


def _status(pods: Pods, ref: str) -> cri.ImageStatusResponse:
    return pods.daemon.images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=ref)))


def test_a_relative_log_directory_is_invalid(pods: Pods) -> None:
    config = pod_config("logs")
    config.log_directory = "var/log/pods/x"
    err = _rpc_error(pods.run, config)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "log_directory" in (err.details() or "")
    assert pods.daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items == []
