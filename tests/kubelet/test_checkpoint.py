"""The kubelet's checkpoint API (`POST /checkpoint/<namespace>/<pod>/<container>`, KEP-2008) on crisp: the kubelet
asks CheckpointContainer for an archive under its root dir's checkpoints/. Where `criu check` fails on this host
(criu 3.17 does not know the vDSO of kernels as new as 6.18), the kubelet answers with crisp's FAILED_PRECONDITION
and CRIU's words, and nothing is left; where it passes, the archive is there and the container keeps running. The
dump through the kubelet under Debian 12's kernel: tests/vm/guest/test_kubelet_qos.py."""

from __future__ import annotations

import json
import tarfile

from tests.criutools import criu_check
from tests.kubelet.conftest import Node, StaticPod
from tests.kubelet.support import container, container_status, is_ready, pod_manifest, wait_pod


def test_the_kubelets_checkpoint_api(node: Node, static_pod: StaticPod) -> None:
    name = static_pod(pod_manifest("ckpt", [container("app", node.busybox, ["sleep", "100000"])]))
    pod = wait_pod(node.kubelet, name, is_ready, 60, "Running and Ready")
    checkpoints = node.kubelet.root / "checkpoints"
    before = set(checkpoints.iterdir()) if checkpoints.exists() else set()
    status, body = node.kubelet.checkpoint(name, "app")
    criu, first_line = criu_check()
    if criu != 0:
        assert status == 500, (status, body)
        assert b"code = FailedPrecondition" in body, body  # crisp's code, in the kubelet's words
        assert first_line.encode() in body, body
        after = set(checkpoints.iterdir()) if checkpoints.exists() else set()
        assert after == before
    else:
        assert status == 200, (status, body)
        archive = json.loads(body)["items"][0]
        with tarfile.open(archive) as tar:
            assert {"config.dump", "spec.dump", "checkpoint/inventory.img"} <= set(tar.getnames())
    again = wait_pod(node.kubelet, name, is_ready, 30, "still Running and Ready")
    assert "running" in container_status(again, "app")["state"]
    assert container_status(again, "app")["restartCount"] == container_status(pod, "app")["restartCount"]
