"""Requests a client should not send, against a real crispd: short image id prefixes, oversized labels and
annotations, relative log directories. Each gets a clear error (or, for a prefix that names nothing, nothing
happens) and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cri import api as cri
from tests.cri.conftest import TestImages
from tests.cri.pods import Pods, pod_config
from tests.imagetools import busybox_layer, file, image, layer
from tests.registrytools import Pusher

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


def test_remove_image_by_short_prefix_names_nothing(pods: Pods, test_images: TestImages) -> None:
    push = Pusher(f"http://{test_images.registry}")
    other = image([busybox_layer(), layer([file("other", b"x")])], labels={"v": "prefix"})
    push.image("crisp/prefix", other, "v1")
    a = _pull(pods, test_images.busybox)
    b = _pull(pods, f"{test_images.registry}/crisp/prefix:v1")
    hexes = [i.removeprefix("sha256:") for i in (a, b)]
    # one to eleven hex characters: a (would-be) reference, never an id prefix
    for ref in (hexes[1][:1], hexes[1][:5], f"sha256:{hexes[1][:4]}", hexes[1][:11]):
        assert not _status(pods, ref).HasField("image"), ref
        _remove(pods, ref)  # names nothing: OK, and nothing goes
        assert _ids(pods) == {a, b}, ref
    # twelve or more: an unambiguous prefix names its image
    assert _status(pods, hexes[1][:12]).image.id == b
    _remove(pods, f"sha256:{hexes[1][:12]}")
    assert _ids(pods) == {a}
    _remove(pods, hexes[0])  # the full id, bare
    assert _ids(pods) == set()


@pytest.mark.parametrize("where", ["labels", "annotations"])
def test_oversized_pod_metadata_is_refused(pods: Pods, where: str) -> None:
    config = pod_config("big")
    getattr(config, where)["big"] = "x" * (256 * 1024)
    err = _rpc_error(pods.run, config)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "256 KiB" in (err.details() or "")
    assert pods.daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items == []


def test_oversized_container_metadata_is_refused(pods: Pods, test_images: TestImages) -> None:
    _pull(pods, test_images.busybox)
    config = pod_config("meta")
    pod_id = pods.run(config)
    container = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="c"),
                                    image=cri.ImageSpec(image=test_images.busybox), command=["true"],
                                    annotations={f"k{i}": "v" * 1024 for i in range(300)})
    err = _rpc_error(pods.daemon.runtime.CreateContainer,
                     cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=container, sandbox_config=config))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert pods.daemon.runtime.ListContainers(cri.ListContainersRequest()).containers == []


def test_metadata_beyond_the_node_budget_is_resource_exhausted(tmp_path: Path) -> None:
    """A node-wide budget keeps List answers far below the kubelet's 16 MiB message limit."""
    from tests.cri.pods import running_pods

    with running_pods(tmp_path, "[limits]\nmetadata_budget_bytes = 1048576\n") as pods:
        made = []
        for i in range(4):  # 4 x 200 KiB: room left for 224 KiB
            config = pod_config(f"m{i}")
            config.annotations["blob"] = "y" * (200 * 1024)
            made.append(pods.run(config))
        config = pod_config("over")
        config.annotations["blob"] = "y" * (250 * 1024)
        err = _rpc_error(pods.run, config)
        assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        listed = pods.daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items
        assert sorted(p.id for p in listed) == sorted(made)
        # room comes back with the pods that go
        pods.daemon.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=made[0]))
        pods.daemon.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=made[0]))
        pods.run(config)


def test_a_relative_log_directory_is_invalid(pods: Pods) -> None:
    config = pod_config("logs")
    config.log_directory = "var/log/pods/x"
    err = _rpc_error(pods.run, config)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "log_directory" in (err.details() or "")
    assert pods.daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items == []
