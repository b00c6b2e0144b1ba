"""What pods are made of, as the kubelet runs them on crisp: init containers that run to completion, in order, before
the app containers start, and an emptyDir volume (a directory of the kubelet's) shared between containers."""

from __future__ import annotations

from datetime import datetime

from tests.kubelet.conftest import Node, StaticPod
from tests.kubelet.support import container, container_status, is_ready, pod_manifest, wait_pod, wait_until

SHARED = {"name": "shared", "mountPath": "/shared"}


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_init_containers_run_to_completion_before_the_app_container(node: Node, static_pod: StaticPod) -> None:
    name = static_pod(pod_manifest("inits", [
        container("app", node.busybox, ["sh", "-c", "cat /shared/order; exec sleep 1000"], volumeMounts=[SHARED]),
    ], initContainers=[
        container("first", node.busybox, ["sh", "-c", "sleep 1; echo first >> /shared/order"], volumeMounts=[SHARED]),
        container("second", node.busybox, ["sh", "-c", "echo second >> /shared/order"], volumeMounts=[SHARED]),
    ], volumes=[{"name": "shared", "emptyDir": {}}]))
    pod = wait_pod(node.kubelet, name, is_ready, 60, "Running and Ready")
    first, second = (container_status(pod, n, init=True)["state"]["terminated"] for n in ("first", "second"))
    for done in (first, second):
        assert done["exitCode"] == 0 and done["reason"] == "Completed", done
    app = container_status(pod, "app")
    assert app["restartCount"] == 0
    # in order, each finished before the next started (the kubelet's timestamps have second resolution)
    assert _time(first["finishedAt"]) <= _time(second["startedAt"]) <= _time(second["finishedAt"])
    assert _time(second["finishedAt"]) <= _time(app["state"]["running"]["startedAt"])
    assert any(c["type"] == "Initialized" and c["status"] == "True" for c in pod["status"]["conditions"])
    wait_until(lambda: node.kubelet.logs(name, "app") == b"first\nsecond\n", 10, "the app's log")


def test_an_empty_dir_is_shared_between_containers(node: Node, static_pod: StaticPod) -> None:
    name = static_pod(pod_manifest("shared", [
        container("writer", node.busybox,
                  ["sh", "-c", "echo $(hostname)-wrote > /shared/note.tmp && mv /shared/note.tmp /shared/note; "
                               "exec sleep 1000"], volumeMounts=[SHARED]),
        container("reader", node.busybox,
                  ["sh", "-c", "until test -e /shared/note; do sleep 0.2; done; cat /shared/note; exec sleep 1000"],
                  volumeMounts=[{**SHARED, "readOnly": True}]),
    ], volumes=[{"name": "shared", "emptyDir": {}}]))
    pod = wait_pod(node.kubelet, name, is_ready, 60, "Running and Ready")
    wait_until(lambda: node.kubelet.logs(name, "reader") == f"{name}-wrote\n".encode(), 15,
               "the reader's log showing the writer's note")
    # the volume is the kubelet's directory, seen by both containers
    volume = node.kubelet.root / "pods" / pod["metadata"]["uid"] / "volumes" / "kubernetes.io~empty-dir" / "shared"
    assert (volume / "note").read_text() == f"{name}-wrote\n"
    # and mounted read-only where the manifest says so
    status, body = node.kubelet.run(name, "reader", "touch /shared/other")
    assert not (volume / "other").exists(), (status, body)
