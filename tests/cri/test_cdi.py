"""CDI devices over a real crispd, under the built-in executor and runc: spec files the test writes (a fake device
backed by the host's /dev/null), asked for by `CDI_devices` and by `cdi.k8s.io/` annotations; the device node is
made in the container and the device filter lets it be used as the spec's permissions say."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from tests.cri.conftest import TestImages
from tests.cri.pods import Pods, running_pods
from tests.cri.test_containers import Kubelet

pytestmark = pytest.mark.root

NULL = os.stat("/dev/null")
# /dev/loop-control is in no default allow list and has no write operation: opening it for writing tells the device
# filter's verdict apart (allowed: the write fails with EINVAL; denied: the open fails with EPERM), harmlessly
CONTROL = "/dev/loop-control"
SPEC = {
    "cdiVersion": "0.6.0", "kind": "crisp.test/fake",
    "containerEdits": {"env": ["FAKE_VENDOR=crisp"]},
    "devices": [
        {"name": "fake0", "containerEdits": {"deviceNodes": [{"path": "/dev/fake0", "hostPath": "/dev/null"}],
                                             "env": ["FAKE_DEVICE=fake0"]}},
        {"name": "ctl-rw", "containerEdits": {"deviceNodes": [{"path": "/dev/fake-ctl-rw", "hostPath": CONTROL}]}},
        {"name": "ctl-ro", "containerEdits": {"deviceNodes": [{"path": "/dev/fake-ctl-ro", "hostPath": CONTROL,
                                                               "permissions": "r"}]}},
    ],
}
PROBE = ("ls -ln /dev/fake0 /dev/fake-ctl-rw 2>/dev/null | awk '{print $1, $5, $6, $NF}'; "
         "echo x > /dev/fake0 && echo wrote-fake0; "
         'for d in fake-ctl-rw fake-ctl-ro; do echo "$d: $( (echo x > /dev/$d) 2>&1)"; done; '
         "echo env=$FAKE_VENDOR/$FAKE_DEVICE")


@pytest.fixture
def cdi_pods(tmp_path: Path) -> Iterator[Pods]:
    static, dynamic = tmp_path / "etc-cdi", tmp_path / "run-cdi"
    static.mkdir()
    dynamic.mkdir()
    with running_pods(tmp_path, f'[cdi]\nspec_dirs = ["{static}", "{dynamic}"]\n') as p:
        yield p


@pytest.fixture(params=["", "runc"], ids=["builtin", "runc"])
def kubelet(request: pytest.FixtureRequest, cdi_pods: Pods, test_images: TestImages, tmp_path: Path) -> Kubelet:
    cdi_pods.handler = request.param
    return Kubelet(cdi_pods, test_images, tmp_path / "logs")


def _log(kubelet: Kubelet, pod: str, name: str) -> list[str]:
    path = kubelet.log_dir / pod / name / "0.log"
    return [line.split(" ", 3)[3] for line in path.read_text().splitlines()] if path.exists() else []


def test_cdi_devices_by_field_and_annotation(kubelet: Kubelet, tmp_path: Path) -> None:
    (tmp_path / "run-cdi" / "fake.yaml").write_text(json.dumps(SPEC))  # JSON is YAML
    pod_id, pod = kubelet.pod("cdi")
    by_field = kubelet.run(pod_id, pod, "by-field", ["sh", "-c", PROBE],
                           CDI_devices=[cri.CDIDevice(name="crisp.test/fake=fake0"),
                                        cri.CDIDevice(name="crisp.test/fake=ctl-rw")])
    # the same host device, read-only: in a container of its own (device rules are by numbers)
    by_annotation = kubelet.run(pod_id, pod, "by-annotation", ["sh", "-c", PROBE],
                                annotations={"cdi.k8s.io/test_ro": "crisp.test/fake=ctl-ro"})
    assert kubelet.wait_exited(by_field).exit_code == 0
    assert kubelet.wait_exited(by_annotation).exit_code == 0
    control = os.stat(CONTROL)
    lines = _log(kubelet, "cdi", "by-field")
    assert lines[:3] == [
        f"crw------- {os.major(control.st_rdev)}, {os.minor(control.st_rdev)} /dev/fake-ctl-rw",
        f"crw-rw-rw- {os.major(NULL.st_rdev)}, {os.minor(NULL.st_rdev)} /dev/fake0", "wrote-fake0"]
    assert lines[3].startswith("fake-ctl-rw: ") and lines[3].endswith("Invalid argument")  # the filter let it open
    assert lines[5:] == ["env=crisp/fake0"]
    lines = _log(kubelet, "cdi", "by-annotation")
    ro = next(line for line in lines if line.startswith("fake-ctl-ro: "))
    assert ro.endswith("Operation not permitted")  # "r" only: opening it for writing is refused
    assert lines[-1] == "env=crisp/"  # the spec's own edits, not fake0's


def test_dynamic_dir_overrides_static_and_unknown_devices_fail(kubelet: Kubelet, tmp_path: Path) -> None:
    static = json.loads(json.dumps(SPEC))
    static["devices"][0]["containerEdits"]["env"] = ["FAKE_DEVICE=from-etc"]
    (tmp_path / "etc-cdi" / "fake.json").write_text(json.dumps(static))
    (tmp_path / "run-cdi" / "fake.json").write_text(json.dumps(SPEC))
    pod_id, pod = kubelet.pod("cdi2")
    cid = kubelet.run(pod_id, pod, "env", ["sh", "-c", "echo $FAKE_DEVICE"],
                      CDI_devices=[cri.CDIDevice(name="crisp.test/fake=fake0")])
    assert kubelet.wait_exited(cid).exit_code == 0
    assert _log(kubelet, "cdi2", "env") == ["fake0"]
    with pytest.raises(grpc.RpcError) as raised:
        kubelet.create(pod_id, pod, "missing", ["true"], CDI_devices=[cri.CDIDevice(name="crisp.test/fake=gpu9")])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "crisp.test/fake=gpu9" in (raised.value.details() or "")
    names = [c.metadata.name for c in kubelet.rt.ListContainers(cri.ListContainersRequest()).containers]
    assert names == ["env"]  # nothing of the failed one
    assert len(list((kubelet.pods.daemon.state / "containers").iterdir())) == 1
