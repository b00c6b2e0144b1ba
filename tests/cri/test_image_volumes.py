"""Image volumes (KEP-4639) over the real socket: an image's root filesystem, or a path in it, mounted read-only
into a container, under the built-in executor and runc."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from tests.cri.conftest import TestImages
from tests.cri.pods import Pods
from tests.cri.test_containers import Kubelet
from tests.imagetools import directory, file, image, layer, symlink
from tests.registrytools import Pusher

pytestmark = pytest.mark.root

VOLUME = "/mnt/image-volume"


@pytest.fixture(scope="module")
def volume_image(test_images: TestImages) -> str:
    """Two layers: the upper one removes a file of the lower (a whiteout) and adds one; a symlink points out of
    the image's root, which must resolve inside it."""
    lower = layer([directory("data"), file("data/a", b"from the lower layer\n"), file("data/gone", b"x"),
                   symlink("data/up", "../../../../data"), directory("only-lower"), file("only-lower/f", b"f\n")])
    upper = layer([directory("data"), file("data/.wh.gone"), file("data/b", b"from the upper layer\n")])
    Pusher(f"http://{test_images.registry}").image("crisp/volume", image([lower, upper]), "v1")
    return f"{test_images.registry}/crisp/volume:v1"


@pytest.fixture(params=["", "runc"], ids=["builtin", "runc"])
def kubelet(request: pytest.FixtureRequest, pods: Pods, test_images: TestImages, tmp_path: Path) -> Kubelet:
    pods.handler = request.param
    return Kubelet(pods, test_images, tmp_path / "logs")


def _pull(kubelet: Kubelet, ref: str) -> str:
    response = kubelet.pods.daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=60)
    return str(response.image_ref)


def _mount(ref: str, sub_path: str = "", readonly: bool = True) -> cri.Mount:
    return cri.Mount(container_path=VOLUME, readonly=readonly, image=cri.ImageSpec(image=ref),
                     image_sub_path=sub_path)


def _snapshots(pods: Pods, image_id: str) -> list[Path]:
    status = pods.daemon.images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=image_id),
                                                                   verbose=True))
    return [Path(p) for p in json.loads(status.info["info"])["snapshots"]]


def test_image_root_read_only_and_executable(kubelet: Kubelet) -> None:
    image_id = _pull(kubelet, kubelet.images.busybox)
    pod_id, pod = kubelet.pod()
    container_id = kubelet.run(pod_id, pod, "app", ["sleep", "1000"], mounts=[_mount(image_id)])
    # a binary of the image runs from the volume (not noexec), the layers are merged (the upper etc/group wins)
    assert kubelet.exec(container_id, [f"{VOLUME}/bin/ls", f"{VOLUME}/bin/sh"]).stdout == f"{VOLUME}/bin/sh\n".encode()
    assert b"audio:x:29" in kubelet.exec(container_id, ["cat", f"{VOLUME}/etc/group"]).stdout
    write = kubelet.exec(container_id, ["touch", f"{VOLUME}/written"])
    assert write.exit_code != 0 and b"Read-only file system" in write.stderr
    [mount] = kubelet.status(container_id).mounts
    assert mount.container_path == VOLUME and mount.readonly
    assert mount.image.image == image_id and mount.image.image_ref == image_id


def test_sub_path_stays_in_the_image_and_merges_layers(kubelet: Kubelet, volume_image: str) -> None:
    _pull(kubelet, kubelet.images.busybox)
    image_id = _pull(kubelet, volume_image)
    pod_id, pod = kubelet.pod()
    # "data/up" leads to ../../../../data: resolved inside the image, that is /data
    for name, sub_path in (("data", "data"), ("link", "data/up")):
        container_id = kubelet.run(pod_id, pod, name, ["sleep", "1000"], mounts=[_mount(volume_image, sub_path)])
        listing = kubelet.exec(container_id, ["ls", "-A", VOLUME]).stdout.split()
        assert listing == [b"a", b"b", b"up"], (sub_path, listing)
        assert kubelet.exec(container_id, ["cat", f"{VOLUME}/b"]).stdout == b"from the upper layer\n"
        assert kubelet.status(container_id).mounts[0].image.image_ref == image_id
    # a directory of one layer is bound as it is, still read-only
    one = kubelet.run(pod_id, pod, "one", ["sleep", "1000"], mounts=[_mount(volume_image, "only-lower")])
    assert kubelet.exec(one, ["cat", f"{VOLUME}/f"]).stdout == b"f\n"
    assert kubelet.exec(one, ["touch", f"{VOLUME}/g"]).exit_code != 0


def test_refusals_leave_nothing(kubelet: Kubelet, volume_image: str) -> None:
    _pull(kubelet, kubelet.images.busybox)
    _pull(kubelet, volume_image)
    pod_id, pod = kubelet.pod()
    cases = [
        (_mount(volume_image, readonly=False), grpc.StatusCode.INVALID_ARGUMENT, "read-only"),
        (_mount(volume_image, "not-there"), grpc.StatusCode.NOT_FOUND, "'not-there' does not exist"),
        (_mount(volume_image, "data/a/below-a-file"), grpc.StatusCode.NOT_FOUND, "does not exist"),
        (_mount(f"{kubelet.images.registry}/crisp/never-pulled:v1"), grpc.StatusCode.NOT_FOUND, "never-pulled"),
        (cri.Mount(container_path="/x", host_path="/tmp", image_sub_path="etc"), grpc.StatusCode.INVALID_ARGUMENT,
         "image_sub_path"),
    ]
    for i, (mount, code, words) in enumerate(cases):
        with pytest.raises(grpc.RpcError) as err:
            kubelet.create(pod_id, pod, f"bad{i}", ["true"], mounts=[mount])
        assert err.value.code() == code and words in str(err.value.details()), err.value
    rt = kubelet.rt
    assert list(rt.ListContainers(cri.ListContainersRequest()).containers) == []
    assert list((kubelet.pods.daemon.state / "containers").iterdir()) == []


def test_the_image_is_held_while_mounted(kubelet: Kubelet, volume_image: str) -> None:
    _pull(kubelet, kubelet.images.busybox)
    image_id = _pull(kubelet, volume_image)
    snapshots = _snapshots(kubelet.pods, image_id)
    pod_id, pod = kubelet.pod()
    container_id = kubelet.run(pod_id, pod, "app", ["sleep", "1000"], mounts=[_mount(volume_image, "data")])
    kubelet.pods.daemon.images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=image_id)))
    assert all(s.is_dir() for s in snapshots)
    assert kubelet.exec(container_id, ["cat", f"{VOLUME}/a"]).stdout == b"from the lower layer\n"
    kubelet.rt.StopContainer(cri.StopContainerRequest(container_id=container_id, timeout=0))
    kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=container_id))
    assert kubelet.pods.cleaned_up(container_id)  # its rootfs and volumes are unmounted after the answer
    # released: the next collection (after a removal) takes its snapshots
    kubelet.pods.daemon.images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=kubelet.images.busybox)))
    assert not any(s.exists() for s in snapshots)
