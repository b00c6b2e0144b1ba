"""A shim killed (kill -9) at each of its steps (runtime/failpoints.py, "shim.*"): the RPC under way fails, the
container is killed and reported exited (exit code 255, reason ShimDied, unless its own exit was already
recorded; 128, StartError, if it died while StartContainer made the container), it can be removed, and nothing is
left."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from tests.cri.conftest import TestImages
from tests.cri.killpoints import World, call_in_thread, tear_down
from tests.cri.pods import Pods
from tests.leaks import mounts_under, processes_mentioning, wait_until

pytestmark = pytest.mark.root

EXITS_SOON = ["sh", "-c", "sleep 1; exit 3"]


def _hung_shim(p: Pods, point: str) -> int:
    """The pid of the shim that stopped at `point` (it says so in its own log)."""
    found: list[int] = []

    def look() -> bool:
        for shim_log in (p.daemon.state / "containers").glob("*/shim.log"):
            if f"debug: stopped at {point} until killed" in shim_log.read_text(errors="replace"):
                found.append(json.loads((shim_log.parent / "shim.json").read_text())["pid"])
                return True
        return False

    assert wait_until(look, 60), f"no shim stopped at {point}:\n{p.daemon.log()}"
    return found[0]


def _kill_during(p: Pods, point: str, call: object) -> grpc.RpcError:
    """Send the call, kill the shim that stops at `point` meanwhile; the call's error."""
    assert callable(call)
    thread, outcome = call_in_thread(call)
    os.kill(_hung_shim(p, point), signal.SIGKILL)
    thread.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], grpc.RpcError), outcome
    return outcome[0]


def _reported_shim_died(w: World) -> cri.ContainerStatus:
    assert wait_until(lambda: w.container_state() == cri.CONTAINER_EXITED, 30)
    status = w.container_status()
    assert (status.exit_code, status.reason) == (255, "ShimDied"), status
    assert "crisp-shim" in status.message and "died" in status.message
    return status


def _restart_without_points(p: Pods) -> None:
    assert p.daemon.stop() == 0
    p.rewrite_config(debug_config='')
    p.daemon.start()


CASES = [
    ("shim.listening", ""), ("shim.rootfs", "runc"), ("shim.created", ""), ("shim.created", "runc"),
    ("shim.started", ""), ("shim.exec", ""), ("shim.exited", ""), ("shim.deleted", ""), ("shim.deleted", "runc"),
    ("running", ""),
]


@pytest.mark.parametrize(("point", "handler"), CASES, ids=[f"{p}-{h or 'builtin'}" for p, h in CASES])
def test_shim_killed(tmp_path: Path, test_images: TestImages, point: str, handler: str) -> None:
    p = Pods(tmp_path, debug_config=f'hang_points = ["{point}"]\n' if point != "running" else "")
    p.handler = handler
    p.daemon.start()
    w = World(p, test_images, tmp_path / "logs")
    try:
        w.pull()
        w.make_pod()
        if point == "shim.listening":
            # CreateContainer only spawns the shim (which answers before it serves): it answers; the shim dies
            # before the container is made; the next crispd (shims no longer stop) finds the container created,
            # and its start makes it with a new shim
            w.make_container(start=False)
            os.kill(_hung_shim(p, point), signal.SIGKILL)
            _restart_without_points(p)
            assert w.container_state() == cri.CONTAINER_CREATED
            w.rt.StartContainer(cri.StartContainerRequest(container_id=w.container_id))
            assert w.container_state() == cri.CONTAINER_RUNNING
            assert w.rt.ExecSync(cri.ExecSyncRequest(container_id=w.container_id, cmd=["echo", "ok"],
                                                     timeout=10)).stdout == b"ok\n"
        elif point in ("shim.rootfs", "shim.created"):
            # the container is made at StartContainer: the killed shim fails it, the container is EXITED
            # (StartError) and nothing of its making is left; once removed, a new one (shims no longer stop) starts
            w.make_container(start=False)
            err = _kill_during(p, point, lambda: w.rt.StartContainer(
                cri.StartContainerRequest(container_id=w.container_id)))
            assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL), err
            status = w.container_status()
            assert (status.state, status.exit_code, status.reason) == (cri.CONTAINER_EXITED, 128, "StartError")
            bundle = p.daemon.state / "containers" / w.container_id
            assert wait_until(lambda: mounts_under(bundle) == processes_mentioning(str(bundle)) == [], 5)
            w.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=w.container_id))
            _restart_without_points(p)
            w.make_container(start=True)
            assert w.container_state() == cri.CONTAINER_RUNNING
        elif point == "shim.started":
            w.make_container(start=False)
            err = _kill_during(p, point, lambda: w.rt.StartContainer(
                cri.StartContainerRequest(container_id=w.container_id)))
            assert err.code() is grpc.StatusCode.UNAVAILABLE, err
            _reported_shim_died(w)
        elif point == "shim.exec":
            w.make_container(start=True)
            err = _kill_during(p, point, lambda: w.rt.ExecSync(cri.ExecSyncRequest(
                container_id=w.container_id, cmd=["sleep", "1000"], timeout=60)))
            assert err.code() is grpc.StatusCode.UNAVAILABLE, err
            _reported_shim_died(w)
        elif point == "shim.exited":
            # the init's exit is recorded in the status file before the shim dies: that is what is reported
            w.make_container(start=True, command=EXITS_SOON)
            os.kill(_hung_shim(p, point), signal.SIGKILL)
            assert wait_until(lambda: w.container_state() == cri.CONTAINER_EXITED, 30)
            status = w.container_status()
            assert (status.exit_code, status.reason) == (3, "Error"), status
        elif point == "shim.deleted":
            w.make_container(start=True)
            thread, outcome = call_in_thread(lambda: w.rt.RemoveContainer(
                cri.RemoveContainerRequest(container_id=w.container_id)))
            os.kill(_hung_shim(p, point), signal.SIGKILL)
            thread.join(60)
            assert outcome == [cri.RemoveContainerResponse()], outcome  # the remove finishes the shim's work
            assert w.containers() == []
        else:  # running: no step of the shim's own, just its death
            w.make_container(start=True)
            bundle = p.daemon.state / "containers" / w.container_id
            os.kill(json.loads((bundle / "shim.json").read_text())["pid"], signal.SIGKILL)
            _reported_shim_died(w)
        if w.containers():
            w.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=w.container_id))
            assert w.containers() == []
        w.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=w.pod_id))
        assert wait_until(lambda: p.leaks() == [], 10), p.leaks()
    finally:
        tear_down(w, tmp_path)
    assert p.daemon.slow_callbacks() == [], p.daemon.log()
