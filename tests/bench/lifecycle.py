"""Figures, not a test: pods and containers through a real crispd, as the kubelet drives them.

Prints median and p95 of RunPodSandbox, CreateContainer, StartContainer, Create+Start and the whole pod-ready
sequence (run pod, create, start), over N pods serially and then with 10 in parallel, and crispd's RSS with 0 and N
pods running. With `--compare DIR` a second crispd runs from the checkout DIR: the serial pods alternate between the
two sides (the parallel part and RSS are this checkout's only).
Run as root from the repository: .venv/bin/python tests/bench/lifecycle.py [--pods 50] [--handler runc]
[--compare DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cri import api as cri
from tests.bench import ab
from tests.cri.pods import Pods, pod_config


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pod_ready(pods: Pods, ref: str, name: str) -> tuple[float, float, str, float, float]:
    """(RunPodSandbox seconds, Create+Start seconds, pod id, CreateContainer seconds, StartContainer seconds)."""
    rt = pods.daemon.runtime
    t0 = time.perf_counter()
    config = pod_config(name)
    pod_id = pods.run(config)
    t1 = time.perf_counter()
    container = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="app"), image=cri.ImageSpec(image=ref),
                                    command=["sleep", "3600"])
    cid = rt.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=container,
                                                        sandbox_config=config)).container_id
    t2 = time.perf_counter()
    rt.StartContainer(cri.StartContainerRequest(container_id=cid))
    t3 = time.perf_counter()
    return t1 - t0, t3 - t1, pod_id, t2 - t1, t3 - t2


def serial_figures(label: str, runs: list[tuple[float, float, str, float, float]]) -> None:
    print(label)
    print("  " + ab.summary("RunPodSandbox (serial)", [r[0] for r in runs]))
    print("  " + ab.summary("CreateContainer (serial)", [r[3] for r in runs]))
    print("  " + ab.summary("StartContainer (serial)", [r[4] for r in runs]))
    print("  " + ab.summary("Create+StartContainer (serial)", [r[1] for r in runs]))
    print("  " + ab.summary("pod ready: run+create+start (serial)", [r[0] + r[1] for r in runs]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--handler", default="", help='runtime handler ("" = built-in, runc, crun)')
    parser.add_argument("--compare", type=Path, help="another checkout whose .venv/bin/crispd runs side by side")
    args = parser.parse_args()
    with ab.running_sides(ab.Side, args.compare) as sides:
        ref = sides[0].ref
        for side in sides:
            side.pods.handler = args.handler
            side.pods.daemon.start()
            side.pods.daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)),
                                              timeout=60)
            pod_ready(side.pods, ref, "warmup")
            side.pods.remove_all_pods()
        pods = sides[0].pods
        assert pods.daemon.proc is not None
        pid = pods.daemon.proc.pid
        rss0 = rss_mb(pid)
        runs: dict[str, list[tuple[float, float, str, float, float]]] = {s.label: [] for s in sides}
        for i in range(args.pods):
            for side in sides if i % 2 == 0 else sides[::-1]:
                runs[side.label].append(pod_ready(side.pods, ref, f"serial{i}"))
        rss_n = rss_mb(pid)
        print(f"handler {args.handler or 'builtin'}, {args.pods} pods, each one busybox `sleep`:")
        for side in sides:
            serial_figures(side.label, runs[side.label])
        print(f"crispd RSS: {rss0:.1f} MB with 0 pods, {rss_n:.1f} MB with {args.pods} pods")
        for side in sides:
            side.pods.remove_all_pods()
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            started = time.perf_counter()
            par = list(pool.map(lambda i: pod_ready(pods, ref, f"par{i}"), range(args.pods)))
            wall = time.perf_counter() - started
        print(ab.summary("RunPodSandbox (10 parallel)", [r[0] for r in par]))
        print(ab.summary("Create+StartContainer (10 parallel)", [r[1] for r in par]))
        print(ab.summary("pod ready (10 parallel)", [r[0] + r[1] for r in par]))
        print(f"10 parallel: {args.pods} pods ready in {wall:.1f} s ({args.pods / wall:.1f} pods/s)")
        pods.remove_all_pods()


if __name__ == "__main__":
    main()
