"""kill -9 of crispd at a fail point (runtime/failpoints.py), a restart, the RPC's retry: one scenario per RPC.

`kill_at(point)`: a crispd that stops at `point` until killed; the scenario's world is made first (a pod, a
container, the image), then the RPC is sent and hangs at the point; crispd gets SIGKILL, a new crispd starts on the
same root and state, the RPC is retried and its outcome checked; then everything is removed and nothing may be
left (Pods.leaks: mounts, cgroups, processes, dirs, veths, nft rules, rows; the image store). The points of work
an RPC does after its answer (ContainerCleanup: RemoveContainer's) are reached after an OK answer; the new crispd
must have finished that work when it serves.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from cri import api as cri
from cri.debug import HANG_MESSAGE
from runtime import failpoints
from tests.cri.pods import Pods, pod_config
from tests.leaks import mounts_under, wait_until

if TYPE_CHECKING:
    from tests.cri.conftest import TestImages

# a container that outlives its stop signal: StopContainer reaches the SIGKILL steps
# (a stop signal sent before its shell set the trap would kill it: make_container waits for the trap)
STUBBORN = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]


@dataclass
class World:
    """What a scenario made before the RPC under test, and what the retry found."""

    pods: Pods
    images: TestImages
    log_dir: Path
    pod_id: str = ""
    pod: cri.PodSandboxConfig = field(default_factory=cri.PodSandboxConfig)
    container_id: str = ""

    @property
    def rt(self) -> cri.RuntimeServiceStub:
        return self.pods.daemon.runtime

    def pull(self) -> None:
        self.pods.daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=self.images.busybox)),
                                          timeout=120)

    def make_pod(self) -> None:
        self.pod = pod_config("killed")
        self.pod.log_directory = str(self.log_dir)
        self.pod_id = self.pods.run(self.pod)

    def create_request(self, command: list[str] = STUBBORN) -> cri.CreateContainerRequest:
        config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="app"),
                                     image=cri.ImageSpec(image=self.images.busybox), command=command,
                                     log_path="app/0.log")
        return cri.CreateContainerRequest(pod_sandbox_id=self.pod_id, config=config, sandbox_config=self.pod)

    def make_container(self, start: bool, command: list[str] = STUBBORN) -> None:
        self.container_id = self.rt.CreateContainer(self.create_request(command)).container_id
        if start:
            self.rt.StartContainer(cri.StartContainerRequest(container_id=self.container_id))
            if command is STUBBORN:  # seen from the host: an exec would go through the shim, which may be held
                pid_file = self.pods.daemon.state / "containers" / self.container_id / "init.pid"
                assert wait_until(lambda: _ignores_term(pid_file)), "the container never set its TERM trap"

    def container_status(self) -> cri.ContainerStatus:
        return self.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=self.container_id)).status

    def container_state(self) -> int:
        return int(self.container_status().state)

    def containers(self) -> list[cri.Container]:
        return list(self.rt.ListContainers(cri.ListContainersRequest()).containers)

    def sandboxes(self) -> list[cri.PodSandbox]:
        return list(self.rt.ListPodSandbox(cri.ListPodSandboxRequest()).items)

    def remove_everything(self, timeout: float = 60) -> None:
        for item in self.rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=timeout).items:
            self.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=item.id), timeout=timeout)
        images = self.pods.daemon.images
        for image in images.ListImages(cri.ListImagesRequest(), timeout=timeout).images:
            images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=image.id)), timeout=timeout)

    def image_leftovers(self) -> list[str]:
        store = self.pods.daemon.root / "images"
        return [f"image store {p}" for sub in ("blobs/sha256", "snapshots", "tmp") if (store / sub).exists()
                for p in (store / sub).iterdir()]


@dataclass(frozen=True)
class Scenario:
    prepare: Callable[[World], None]
    call: Callable[[World], object]
    # checks the retry's outcome (it may raise grpc.RpcError where the scenario allows it)
    retry: Callable[[World], None]
    # the call answers before its points (work done after the answer): the kill comes after an OK answer
    answered: bool = False


def _expect_ok_or(codes: tuple[grpc.StatusCode, ...], call: Callable[[], object]) -> None:
    try:
        call()
    except grpc.RpcError as err:
        assert err.code() in codes, err


def _retry_run(w: World) -> None:
    pod_id = w.pods.run(w.pod)
    listed = w.sandboxes()
    assert [(i.id, i.state) for i in listed] == [(pod_id, cri.SANDBOX_READY)]


def _call_run(w: World) -> object:
    w.pod = pod_config("killed")
    w.pod.log_directory = str(w.log_dir)
    return w.pods.run(w.pod)


def _ignores_term(pid_file: Path) -> bool:
    """Whether the container's init (its pid in the shim's pid file) ignores SIGTERM (SigIgn in its status)."""
    try:
        status = Path(f"/proc/{int(pid_file.read_text())}/status").read_text()
    except (OSError, ValueError):
        return False
    ignored = next((line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), "0")
    return bool(int(ignored, 16) & (1 << (signal.SIGTERM - 1)))


def _retry_create(w: World) -> None:
    w.container_id = w.rt.CreateContainer(w.create_request()).container_id
    assert [(c.id, c.state) for c in w.containers()] == [(w.container_id, cri.CONTAINER_CREATED)]
    w.rt.StartContainer(cri.StartContainerRequest(container_id=w.container_id))
    assert w.container_state() == cri.CONTAINER_RUNNING


def _retry_start(w: World) -> None:
    # the start may have happened before the kill: then the retry is refused, and the container runs
    _expect_ok_or((grpc.StatusCode.FAILED_PRECONDITION,),
                  lambda: w.rt.StartContainer(cri.StartContainerRequest(container_id=w.container_id)))
    assert w.container_state() == cri.CONTAINER_RUNNING
    reply = w.rt.ExecSync(cri.ExecSyncRequest(container_id=w.container_id, cmd=["echo", "ok"], timeout=10))
    assert reply.stdout == b"ok\n"


def _retry_stop(w: World) -> None:
    w.rt.StopContainer(cri.StopContainerRequest(container_id=w.container_id, timeout=1))
    assert w.container_state() == cri.CONTAINER_EXITED


def _retry_remove(w: World) -> None:
    w.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=w.container_id))
    assert w.containers() == []
    w.make_container(start=True)  # the name is free again


def _cleanup_finished(w: World) -> None:
    """The restarted crispd finished the removed container's cleanup before it served: nothing of it is left
    (its pod is), and its name is free."""
    assert w.containers() == []
    left = [leak for leak in w.pods.leaks() if w.container_id in leak]
    assert left == [], left
    w.make_container(start=True)


def _retry_stop_pod(w: World) -> None:
    w.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=w.pod_id))
    assert [(i.id, i.state) for i in w.sandboxes()] == [(w.pod_id, cri.SANDBOX_NOTREADY)]
    assert w.container_state() == cri.CONTAINER_EXITED


def _retry_remove_pod(w: World) -> None:
    w.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=w.pod_id))
    assert w.sandboxes() == [] and w.containers() == []
    w.make_pod()  # the name is free again


def _retry_pull(w: World) -> None:
    w.pull()
    status = w.pods.daemon.images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=w.images.busybox)))
    assert status.image.id.startswith("sha256:")
    w.make_pod()
    w.make_container(start=True)  # its layers were unpacked whole
    assert w.container_state() == cri.CONTAINER_RUNNING


def _nothing(w: World) -> None:
    return None


def _pod_and_image(w: World) -> None:
    w.pull()
    w.make_pod()


def _created(w: World) -> None:
    _pod_and_image(w)
    w.make_container(start=False)


def _running(w: World) -> None:
    _pod_and_image(w)
    w.make_container(start=True)


SCENARIOS: dict[str, Scenario] = {
    "RunPodSandbox": Scenario(_nothing, _call_run, _retry_run),
    "CreateContainer": Scenario(_pod_and_image, lambda w: w.rt.CreateContainer(w.create_request()), _retry_create),
    "StartContainer": Scenario(
        _created, lambda w: w.rt.StartContainer(cri.StartContainerRequest(container_id=w.container_id)),
        _retry_start),
    "StopContainer": Scenario(
        _running, lambda w: w.rt.StopContainer(cri.StopContainerRequest(container_id=w.container_id, timeout=1)),
        _retry_stop),
    "RemoveContainer": Scenario(
        _running, lambda w: w.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=w.container_id)),
        _retry_remove),
    # RemoveContainer answered; crispd is killed while it cleans up what the container left
    "ContainerCleanup": Scenario(
        _running, lambda w: w.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=w.container_id)),
        _cleanup_finished, answered=True),
    "StopPodSandbox": Scenario(
        _running, lambda w: w.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=w.pod_id)),
        _retry_stop_pod),
    "RemovePodSandbox": Scenario(
        _running, lambda w: w.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=w.pod_id)),
        _retry_remove_pod),
    "PullImage": Scenario(_nothing, lambda w: w.pull(), _retry_pull),
}

# every RPC point (and the points of work an RPC leaves for after its answer); crispd's start-up points are not an
# RPC's
RPC_POINTS = [p for operation, points in failpoints.STEPS.items() if operation in SCENARIOS for p in points]


def call_in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException | object]]:
    outcome: list[BaseException | object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def kill_at(point: str, base: Path, images: TestImages, retry: Callable[[World], None] | None = None) -> None:
    """The whole test of one point (see the module's docstring); `retry` instead of the scenario's retry."""
    scenario = SCENARIOS[failpoints.operation_of(point)]
    if retry is not None:
        scenario = dataclasses.replace(scenario, retry=retry)
    p = Pods(base, debug_config=f'hang_points = ["{point}"]\n')
    p.daemon.start()
    world = World(p, images, base / "logs")
    try:
        scenario.prepare(world)
        thread, outcome = call_in_thread(lambda: scenario.call(world))
        hung = HANG_MESSAGE % point
        assert wait_until(lambda: hung in p.daemon.log(), 60), f"crispd never reached {point}:\n{p.daemon.log()}"
        assert p.daemon.proc is not None
        os.kill(p.daemon.proc.pid, signal.SIGKILL)
        p.daemon.proc.wait(30)
        thread.join(30)  # the channel stays open until the call has its answer
        if scenario.answered:
            assert len(outcome) == 1 and not isinstance(outcome[0], BaseException), outcome
        else:
            assert len(outcome) == 1 and isinstance(outcome[0], grpc.RpcError), outcome
            assert outcome[0].code() is grpc.StatusCode.UNAVAILABLE, outcome[0]
        assert p.daemon.stop() == -signal.SIGKILL
        # the dead crispd's socket: a client that finds it backs off for seconds; the next crispd makes a new one
        p.daemon.socket.unlink()

        p.rewrite_config(debug_config='')
        p.daemon.start()
        scenario.retry(world)
        world.remove_everything()
        assert wait_until(lambda: p.leaks() + world.image_leftovers() == [], 10), \
            p.leaks() + world.image_leftovers()
    finally:
        tear_down(world, base)
    assert p.daemon.slow_callbacks() == [], p.daemon.log()


def tear_down(world: World, base: Path) -> None:
    """The end of every kill scenario, also a failed one: its pods removed (leave_nothing), crispd stopped, the
    mounts under the test's dir detached, the host bits of its crispd dropped."""
    try:
        leave_nothing(world)
    finally:
        world.pods.daemon.stop()
        for m in reversed(mounts_under(base)):
            subprocess.run(["umount", "-l", m], check=False)
        world.pods.cleanup_host()


def leave_nothing(world: World) -> None:
    """A test that failed half way leaves its pods to a crispd without fail points, which removes them (best
    effort: the test's own error is the one that counts)."""
    daemon = world.pods.daemon
    try:
        if daemon.proc is not None and daemon.proc.poll() is None:
            try:
                world.remove_everything(timeout=30)
                return
            except grpc.RpcError:  # stopped at its point: killed, as the test would have
                daemon.stop(signal.SIGKILL)
        world.pods.rewrite_config(debug_config='')
        daemon.start()
        world.remove_everything()
    except (grpc.RpcError, RuntimeError):
        pass
