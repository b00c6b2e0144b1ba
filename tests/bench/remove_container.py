"""Figures, not a test: RemoveContainer of a stopped container (critest's benchmark order: create, start, stop,
remove), and of a created one, through a real crispd over its socket; then StopPodSandbox and RemovePodSandbox
of pods with one running container.

Prints the median and p95 of N RemoveContainer calls. With `--compare DIR` a second crispd runs from the checkout
DIR (its `.venv/bin/crispd`, e.g. /work/main) on its own root, socket, cgroup base and bridge, and the calls
alternate between the two (ABBA order), so both see the same load on the host.
Run as root from the repository: .venv/bin/python tests/bench/remove_container.py [--runs 20] [--compare DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cri import api as cri
from tests.bench import ab
from tests.cri.pods import pod_config


class Side(ab.Side):
    """One crispd with a pod; `remove_once` makes a container and times its RemoveContainer."""

    def __init__(self, label: str, base: Path, ref: str, program: list[str] | None) -> None:
        super().__init__(label, base, ref, program)
        self.stopped: list[float] = []
        self.created: list[float] = []
        self.cycles: list[float] = []  # create+start+stop, right after the previous removal (its cleanup may run)
        self.pod_stops: list[float] = []
        self.pod_removals: list[float] = []
        self.n = 0

    def start(self) -> None:
        self.pods.daemon.start()
        self.pods.daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=self.ref)), timeout=60)
        self.config = pod_config("bench")
        self.pod_id = self.pods.run(self.config)

    def remove_once(self, start: bool) -> None:
        rt = self.pods.daemon.runtime
        self.n += 1
        t0 = time.perf_counter()
        config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name=f"c{self.n}"),
                                     image=cri.ImageSpec(image=self.ref), command=["sleep", "3600"])
        cid = rt.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=self.pod_id, config=config,
                                                            sandbox_config=self.config)).container_id
        if start:
            rt.StartContainer(cri.StartContainerRequest(container_id=cid))
            rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0))
            self.cycles.append(time.perf_counter() - t0)
        time.sleep(0.2)  # what the previous call left to do in the background is not this call's
        t1 = time.perf_counter()
        rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid))
        (self.stopped if start else self.created).append(time.perf_counter() - t1)

    def pod_once(self, i: int) -> None:
        """A pod with a running container: StopPodSandbox and RemovePodSandbox timed (the kubelet's order)."""
        rt = self.pods.daemon.runtime
        config = pod_config(f"p{i}")
        pod_id = self.pods.run(config)
        container = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="app"), image=cri.ImageSpec(image=self.ref),
                                        command=["sleep", "3600"])
        cid = rt.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=container,
                                                            sandbox_config=config)).container_id
        rt.StartContainer(cri.StartContainerRequest(container_id=cid))
        time.sleep(0.2)
        t0 = time.perf_counter()
        rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        t1 = time.perf_counter()
        rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        self.pod_stops.append(t1 - t0)
        self.pod_removals.append(time.perf_counter() - t1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--pods", type=int, default=10, help="pods stopped and removed (0: none)")
    parser.add_argument("--compare", type=Path, help="another checkout whose .venv/bin/crispd runs side by side")
    args = parser.parse_args()
    with ab.running_sides(Side, args.compare) as sides:
        for side in sides:
            side.start()
            side.remove_once(start=True)  # warm-up, not counted
            side.stopped.clear()
            side.cycles.clear()
        for i in range(args.runs):
            order = sides if i % 2 == 0 else sides[::-1]
            for side in order:
                side.remove_once(start=True)
            for side in order[::-1]:
                side.remove_once(start=False)
        for i in range(args.pods):
            for side in (sides if i % 2 == 0 else sides[::-1]):
                side.pod_once(i)
        for side in sides:
            print(ab.summary(f"{side.label}: RemoveContainer, stopped", side.stopped))
            print(ab.summary(f"{side.label}: RemoveContainer, created", side.created))
            print(ab.summary(f"{side.label}: Create+Start+Stop after a removal", side.cycles))
            if side.pod_stops:
                print(ab.summary(f"{side.label}: StopPodSandbox (1 container)", side.pod_stops))
                print(ab.summary(f"{side.label}: RemovePodSandbox after it", side.pod_removals))


if __name__ == "__main__":
    main()
