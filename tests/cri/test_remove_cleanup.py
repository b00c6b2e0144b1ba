"""RemoveContainer answers once the container is gone and its name free; its remains (shim, mounts, cgroup, dirs)
are cleaned up after the answer, from a journal entry that stays until the cleanup succeeds. A real crispd over
its socket, with `[debug]` points to hold, fail or kill the cleanup (the kill -9 at each of its points is in
tests/cri/test_kill_points.py)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from tests.cri.conftest import TestImages
from tests.cri.killpoints import World, tear_down
from tests.cri.pods import Pods
from tests.leaks import wait_until

pytestmark = pytest.mark.root

SLEEPER = ["sleep", "3600"]


@pytest.fixture
def world(tmp_path: Path, test_images: TestImages) -> Iterator[World]:
    """A crispd whose debug config the test sets (`restart`), with a pod and a running container."""
    w = World(Pods(tmp_path), test_images, tmp_path / "logs")
    try:
        yield w
    finally:
        tear_down(w, tmp_path)


def restart(w: World, debug: str = "", sig: int = signal.SIGTERM) -> int:
    """Stop crispd (if it runs) with `sig`, start it again with `debug` in its [debug] table; its exit code."""
    code = w.pods.daemon.stop(sig) if w.pods.daemon.proc is not None else 0
    if w.pods.daemon.socket.exists():  # a killed crispd's
        w.pods.daemon.socket.unlink()
    w.pods.rewrite_config(debug_config=debug)
    w.pods.daemon.start()
    return code


def remains_of(w: World, container_id: str) -> list[str]:
    """What is left of a container: its mounts, cgroup, shim, dirs, rows (the journal entry too)."""
    return [leak for leak in w.pods.leaks() if container_id in leak]


def remove(w: World, container_id: str) -> None:
    w.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=container_id))


def test_removed_container_is_gone_at_once_and_its_remains_go_after(world: World) -> None:
    w = world
    restart(w, '[debug.delay_points]\n"container_cleanup.shim" = 3000\n')
    w.pull()
    w.make_pod()
    w.make_container(start=True, command=SLEEPER)
    old = w.container_id
    remove(w, old)
    # the answer came before the cleanup: the shim has deleted the container, its dirs are still there
    assert (w.pods.daemon.state / "containers" / old).exists()
    assert f"container_removals {old}" in w.pods.rows()
    assert w.containers() == []
    with pytest.raises(grpc.RpcError) as err:
        w.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=old))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    remove(w, old)  # again: OK
    w.make_container(start=True, command=SLEEPER)  # the same name, in the same pod, at once
    assert w.container_id != old
    assert [(c.id, c.state) for c in w.containers()] == [(w.container_id, cri.CONTAINER_RUNNING)]
    assert w.pods.cleaned_up(old)
    assert remains_of(w, old) == []
    # a created container (never started) goes the same way
    remove(w, w.container_id)
    w.make_container(start=False, command=SLEEPER)
    created = w.container_id
    remove(w, created)
    assert w.containers() == []
    assert w.pods.cleaned_up(created)
    assert remains_of(w, created) == []
    w.remove_everything()
    assert wait_until(lambda: w.pods.leaks() == [], 10), w.pods.leaks()


def test_a_failed_cleanup_is_kept_and_the_pod_waits_for_it(world: World) -> None:
    w = world
    restart(w, 'fail_points = ["container_cleanup.dirs"]\n')
    w.pull()
    w.make_pod()
    w.make_container(start=True, command=SLEEPER)
    old = w.container_id
    remove(w, old)
    assert w.containers() == []
    assert wait_until(lambda: f"container {old}: cleaning up its remains failed" in w.pods.daemon.log(), 10)
    assert f"container_removals {old}" in w.pods.rows()  # kept for the next try
    # the pod is not removed while a container's cleanup fails: it stays for the kubelet's retry
    with pytest.raises(grpc.RpcError) as err:
        w.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=w.pod_id))
    assert "injected failure at container_cleanup.dirs" in (err.value.details() or "")
    assert [s.id for s in w.sandboxes()] == [w.pod_id]
    # a crispd without the failure finishes it at its start
    assert restart(w) == 0
    assert remains_of(w, old) == []
    w.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=w.pod_id))
    assert wait_until(lambda: w.pods.leaks() == [], 10), w.pods.leaks()


def test_remove_pod_right_after_remove_container_leaves_nothing(world: World) -> None:
    w = world
    restart(w, '[debug.delay_points]\n"container_cleanup.dirs" = 1500\n')
    w.pull()
    w.make_pod()
    w.make_container(start=True, command=SLEEPER)
    remove(w, w.container_id)
    w.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=w.pod_id))  # waits for the cleanup
    assert w.pods.leaks() == []


def test_a_graceful_stop_finishes_or_keeps_the_cleanups(world: World) -> None:
    w = world
    restart(w, '[debug.delay_points]\n"container_cleanup.shim" = 1500\n')
    w.pull()
    w.make_pod()
    w.make_container(start=True, command=SLEEPER)
    old = w.container_id
    remove(w, old)
    assert restart(w) == 0  # SIGTERM while the cleanup is under way
    assert remains_of(w, old) == []
    log = w.pods.daemon.log()
    assert f"container {old}: its remains are cleaned up" in log


def test_crispd_killed_during_cleanups_of_many_containers(world: World) -> None:
    """Several removals answered, crispd killed while their cleanups hang: the next crispd finishes them all."""
    w = world
    restart(w, 'hang_points = ["container_cleanup.dirs"]\n')
    w.pull()
    w.make_pod()
    removed = []
    for i in range(3):
        config = w.create_request(SLEEPER)
        config.config.metadata.name = f"app{i}"
        container_id = w.rt.CreateContainer(config).container_id
        w.rt.StartContainer(cri.StartContainerRequest(container_id=container_id))
        remove(w, container_id)
        removed.append(container_id)
    assert w.containers() == []
    assert wait_until(lambda: all(f"container_removals {c}" in w.pods.rows() for c in removed), 10)
    assert restart(w, sig=signal.SIGKILL) == -signal.SIGKILL
    assert [leak for c in removed for leak in remains_of(w, c)] == []
    w.remove_everything()
    assert wait_until(lambda: w.pods.leaks() == [], 10), w.pods.leaks()


def test_an_image_removed_before_the_cleanup_is_collected_after_it(world: World) -> None:
    """The kubelet may remove an image as soon as no container lists it: its snapshots stay while the removed
    container's rootfs may still be mounted, and go once its cleanup is done."""
    w = world
    restart(w, '[debug.delay_points]\n"container_cleanup.shim" = 1500\n')
    w.pull()
    w.make_pod()
    w.make_container(start=True, command=SLEEPER)
    remove(w, w.container_id)
    w.pods.daemon.images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=w.images.busybox)))
    assert w.pods.daemon.images.ListImages(cri.ListImagesRequest()).images == []
    assert any("snapshots" in left for left in w.image_leftovers())  # in use by the cleanup under way
    assert wait_until(lambda: w.image_leftovers() == [], 15), w.image_leftovers()
    w.remove_everything()
    assert wait_until(lambda: w.pods.leaks() == [], 10), w.pods.leaks()
