"""The restart scenario of issue 18: 20 pods start at once, crispd gets kill -9 half way, a new crispd starts; each
pod's interrupted step is retried once (as the kubelet would), and then every pod is READY with its container
running, nothing started before the kill lost a log line, and once they are removed nothing is left."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from tests.cri.conftest import TestImages
from tests.cri.killpoints import World, tear_down
from tests.cri.pods import Pods, pod_config
from tests.cri.test_containers import read_log
from tests.leaks import wait_until

pytestmark = pytest.mark.root

PODS = 20
TALKER = ["sh", "-c", "i=0; while :; do echo line $i; i=$((i+1)); sleep 0.05; done"]


@dataclass
class Pod:
    """One pod as the kubelet drives it: run, create, start; `step` is the first one not done yet."""

    name: str
    config: cri.PodSandboxConfig
    pod_id: str = ""
    container_id: str = ""
    step: str = "run"

    def advance(self, rt: cri.RuntimeServiceStub, image: str) -> None:
        """Do the steps left; an error stops at the step that failed."""
        if self.step == "run":
            self.pod_id = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=self.config)).pod_sandbox_id
            self.step = "create"
        if self.step == "create":
            config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="talker"),
                                         image=cri.ImageSpec(image=image), command=TALKER, log_path="talker.log")
            self.container_id = rt.CreateContainer(cri.CreateContainerRequest(
                pod_sandbox_id=self.pod_id, config=config, sandbox_config=self.config)).container_id
            self.step = "start"
        if self.step == "start":
            try:
                rt.StartContainer(cri.StartContainerRequest(container_id=self.container_id))
            except grpc.RpcError as err:
                # started before the kill, answered after it: the retry is refused, the container runs
                if err.code() is not grpc.StatusCode.FAILED_PRECONDITION:
                    raise
            self.step = "done"


def test_twenty_pods_and_a_kill(tmp_path: Path, test_images: TestImages) -> None:
    p = Pods(tmp_path)
    p.daemon.start()
    w = World(p, test_images, tmp_path / "logs")
    pods = []
    for i in range(PODS):
        config = pod_config(f"p{i}")
        config.log_directory = str(tmp_path / "logs" / f"p{i}")
        pods.append(Pod(f"p{i}", config))
    try:
        w.pull()
        rt = p.daemon.runtime
        ready = threading.Semaphore(0)

        def drive(pod: Pod) -> None:
            try:
                pod.advance(rt, test_images.busybox)
                ready.release()
            except grpc.RpcError:
                pass  # crispd was killed under it: retried below

        with concurrent.futures.ThreadPoolExecutor(PODS) as pool:
            futures = [pool.submit(drive, pod) for pod in pods]
            for _ in range(PODS // 4):  # a quarter of the pods are up: kill it
                ready.acquire(timeout=120)
            assert p.daemon.proc is not None
            os.kill(p.daemon.proc.pid, signal.SIGKILL)
            p.daemon.proc.wait(10)
            concurrent.futures.wait(futures, 120)
        interrupted = {pod.name: pod.step for pod in pods if pod.step != "done"}
        assert interrupted, "every pod was up before the kill: nothing was interrupted"
        running = [pod for pod in pods if pod.step == "done"]
        sizes = {pod.name: _log(tmp_path, pod).stat().st_size for pod in running}

        p.daemon.stop()
        p.daemon.socket.unlink()
        p.daemon.start(timeout=90)  # it undoes what the kill interrupted before it answers
        rt = p.daemon.runtime
        for pod in pods:
            if pod.step != "done":
                pod.advance(rt, test_images.busybox)  # one retry, as the kubelet's next sync would
        listed = {item.id: item.state for item in rt.ListPodSandbox(cri.ListPodSandboxRequest()).items}
        assert listed == {pod.pod_id: cri.SANDBOX_READY for pod in pods}, interrupted
        containers = {c.id: c.state for c in rt.ListContainers(cri.ListContainersRequest()).containers}
        assert containers == {pod.container_id: cri.CONTAINER_RUNNING for pod in pods}
        for pod in running:  # the shims kept logging while crispd was away, and lost nothing
            assert _log(tmp_path, pod).stat().st_size > sizes[pod.name]
        for pod in pods:
            rt.StopContainer(cri.StopContainerRequest(container_id=pod.container_id, timeout=0))
            numbers = [int(text.split()[1]) for _, tag, text in read_log(_log(tmp_path, pod)) if tag == "F"]
            assert numbers and numbers == list(range(len(numbers)))
        w.remove_everything()
        assert wait_until(lambda: p.leaks() + w.image_leftovers() == [], 10), p.leaks() + w.image_leftovers()
    finally:
        tear_down(w, tmp_path)


def _log(base: Path, pod: Pod) -> Path:
    return base / "logs" / pod.name / "talker.log"
