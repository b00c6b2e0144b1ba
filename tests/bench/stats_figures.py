"""Figures for the stats, metrics and events RPCs (run as root: `python -m tests.bench.stats_figures [--pods 10]`).

A crispd on a temporary root with N pods, each with one running container (a loopback registry serves busybox):
- the median time of ContainerStats, ListContainerStats, ListPodSandboxStats and ListPodSandboxMetrics (client side,
  over the socket), and of a /metrics scrape;
- the size of the ListPodSandboxMetrics answer and of the /metrics page;
- the delay from a StopContainer call to its CONTAINER_STOPPED event at a subscriber.

Prints figures; asserts nothing (tests/ prove behaviour, this measures it).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc

from cri import api as cri
from tests.cri.pods import running_pods
from tests.imagetools import busybox_image
from tests.registrytools import Pusher, running_registry


def timed(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(reps):
        began = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crisp-bench-stats-") as tmp:
        base = Path(tmp)
        (base / "registry").mkdir()
        with running_registry(base / "registry") as reg:
            Pusher(reg.url).image("crisp/busybox", busybox_image(), "latest")
            ref = f"{reg.host}/crisp/busybox:latest"
            (base / "crispd").mkdir()
            with running_pods(base / "crispd") as pods:
                rt = pods.daemon.runtime
                pods.daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=120)
                containers = []
                for i in range(args.pods):
                    config = cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(
                        name=f"bench{i}", namespace="default", uid=f"uid-bench{i}"))
                    pod_id = pods.run(config)
                    cid = rt.CreateContainer(cri.CreateContainerRequest(
                        pod_sandbox_id=pod_id, sandbox_config=config, config=cri.ContainerConfig(
                            metadata=cri.ContainerMetadata(name="app"), image=cri.ImageSpec(image=ref),
                            command=["sleep", "100000"]))).container_id
                    rt.StartContainer(cri.StartContainerRequest(container_id=cid))
                    containers.append(cid)
                url = pods.daemon.metrics_url()
                figures = {
                    "ContainerStats": timed(lambda: rt.ContainerStats(
                        cri.ContainerStatsRequest(container_id=containers[0])), args.reps),
                    "ListContainerStats": timed(lambda: rt.ListContainerStats(cri.ListContainerStatsRequest()),
                                                args.reps),
                    "ListPodSandboxStats": timed(lambda: rt.ListPodSandboxStats(cri.ListPodSandboxStatsRequest()),
                                                 args.reps),
                    "ListPodSandboxMetrics": timed(lambda: rt.ListPodSandboxMetrics(
                        cri.ListPodSandboxMetricsRequest()), args.reps),
                    "GET /metrics": timed(lambda: urllib.request.urlopen(url, timeout=30).read(), args.reps),
                }
                print(f"{args.pods} pods, one running container each; median of {args.reps} (ms):")
                for name, (ms, _) in figures.items():
                    print(f"  {name:24s} {ms:8.1f}")
                metrics = figures["ListPodSandboxMetrics"][1]
                assert isinstance(metrics, cri.ListPodSandboxMetricsResponse)
                count = sum(len(p.metrics) + sum(len(c.metrics) for c in p.container_metrics)
                            for p in metrics.pod_metrics)
                print(f"  ListPodSandboxMetrics: {count} metrics, {metrics.ByteSize() / 1024:.0f} KiB")
                page = figures["GET /metrics"][1]
                assert isinstance(page, bytes)
                print(f"  /metrics page: {len(page) / 1024:.0f} KiB")

                # event delay: StopContainer's call to the subscriber's receipt of CONTAINER_STOPPED
                stream = rt.GetContainerEvents(cri.GetEventsRequest())
                seen: dict[str, float] = {}

                def read() -> None:
                    with contextlib.suppress(grpc.RpcError):  # cancelled at the end
                        for event in stream:
                            if event.container_event_type == cri.CONTAINER_STOPPED_EVENT:
                                seen[event.container_id] = time.perf_counter()

                threading.Thread(target=read, daemon=True).start()
                time.sleep(1)
                delays = []
                for cid in containers:
                    began = time.perf_counter()
                    rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0))
                    while cid not in seen:
                        time.sleep(0.001)
                    delays.append((seen[cid] - began) * 1000)
                stream.cancel()
                print(f"  StopContainer(timeout 0) call -> its STOPPED event at a subscriber: median "
                      f"{statistics.median(delays):.1f} ms (the kill and exit included: the event is published when "
                      "the exit is recorded)")


if __name__ == "__main__":
    main()
