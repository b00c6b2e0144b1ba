"""CheckpointContainer over the real socket on this host: its request checks, and, where CRIU cannot work here (as
on kernels whose vDSO criu 3.17 does not know), FAILED_PRECONDITION with `criu check`'s own words, nothing left
behind and the container still running. The dump itself is tested in the VM tier (tests/vm/guest/test_checkpoint.py),
whose kernel criu checks."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cri import api as cri
from tests.cri.conftest import TestImages
from tests.cri.pods import Pods, pod_config
from tests.criutools import criu_check

pytestmark = pytest.mark.root

SLEEP = ["sleep", "100000"]


def _container(pods: Pods, images: TestImages, tmp_path: Path, start: bool = True) -> str:
    rt = pods.daemon.runtime
    pods.daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=images.busybox)), timeout=60)
    pod = pod_config("ckpt")
    pod.log_directory = str(tmp_path / "logs")
    pod_id = pods.run(pod)
    config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="app"),
                                 image=cri.ImageSpec(image=images.busybox), command=SLEEP, log_path="app.log")
    container_id = str(rt.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod)).container_id)
    if start:
        rt.StartContainer(cri.StartContainerRequest(container_id=container_id))
    return container_id


def _checkpoint_error(pods: Pods, container_id: str, location: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        pods.daemon.runtime.CheckpointContainer(cri.CheckpointContainerRequest(
            container_id=container_id, location=location), timeout=120)
    return info.value


def _left_behind(pods: Pods, out: Path) -> list[str]:
    staging = pods.daemon.state / "checkpoints"
    left = [str(p) for p in out.iterdir()]
    return left + ([str(p) for p in staging.iterdir()] if staging.exists() else [])


@pytest.mark.parametrize("handler", ["", "runc"], ids=["builtin", "runc"])
def test_refused_with_crius_reason_where_criu_check_fails(pods: Pods, test_images: TestImages, tmp_path: Path,
                                                          handler: str) -> None:
    status, first_line = criu_check()
    if status == 0:
        pytest.skip("criu check passes on this host: the dump is tested in the VM tier")
    pods.handler = handler
    container_id = _container(pods, test_images, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    dead = pods.daemon.state / "checkpoints" / "0123456789ab-dead"  # staged by a crispd that died meanwhile
    dead.mkdir(parents=True)
    (dead / "dump.log").write_text("x")
    for _ in range(2):  # the second answer comes from crispd's cached verdict: the same words
        error = _checkpoint_error(pods, container_id, str(out / "app.tar"))
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert first_line in (error.details() or ""), error.details()
        assert _left_behind(pods, out) == []
    assert pods.daemon.log().count("checkpoints are refused on this host") == 1
    status_now = pods.daemon.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id)).status
    assert status_now.state == cri.CONTAINER_RUNNING


def test_request_checks(pods: Pods, test_images: TestImages, tmp_path: Path) -> None:
    container_id = _container(pods, test_images, tmp_path, start=False)
    out = tmp_path / "out"
    out.mkdir()
    for location in ("", "app.tar", "out/app.tar"):
        error = _checkpoint_error(pods, container_id, location)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (location, error.details())
    error = _checkpoint_error(pods, "0" * 64, str(out / "app.tar"))
    assert error.code() is grpc.StatusCode.NOT_FOUND, error.details()
    error = _checkpoint_error(pods, container_id, str(out / "app.tar"))  # created, never started
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert "only a running container" in (error.details() or "")
    assert _left_behind(pods, out) == []
