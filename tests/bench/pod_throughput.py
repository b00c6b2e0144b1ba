"""Figures, not a test: pod throughput of a real crispd (RunPodSandbox only, no containers), as issue 17 asks.

N pods made P at a time (RunPodSandbox over gRPC), then all stopped at once (N concurrent StopPodSandbox), then all
removed at once; for each phase its wall time, pods per second, call median and p95, and the CPU seconds crispd and
its network helpers spent (from /proc, helpers sampled while alive). `--rounds R` repeats the whole cycle on the
same crispd; `--shared-pid` gives each pod a pod init (as the kubelet's shareProcessNamespace pods); `--py-spy PATH`
samples crispd and its children (helpers, zygote) with py-spy (`record --format raw`, every thread) over the run into
PATH.
Run as root from the repository: .venv/bin/python -m tests.bench.pod_throughput [--pods 50] [--parallel 10]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cri import api as cri
from tests.cri.pods import Pods, pod_config
from tests.leaks import children_of, mounts_under

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


class CpuMeter:
    """CPU seconds of crispd and of its children (helpers, nft, ...) while they live, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.children: dict[int, float] = {}

    def sample(self) -> None:
        for child in children_of(self.pid):
            self.children[child] = max(self.children.get(child, 0.0), cpu_seconds(child))

    def children_total(self) -> float:
        return sum(self.children.values())


def percentiles(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"median {statistics.median(ms):7.1f} ms  p95 {p95:7.1f} ms"


def timed(call: Callable[[], object]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def phase(label: str, meter: CpuMeter, workers: int, calls: list[Callable[[], object]]) -> None:
    own, kids = cpu_seconds(meter.pid), meter.children_total()
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(timed, c) for c in calls]
        while not all(f.done() for f in futures):
            meter.sample()
            time.sleep(0.05)
        durations = [f.result() for f in futures]
    wall = time.perf_counter() - began
    crispd = cpu_seconds(meter.pid) - own
    helpers = meter.children_total() - kids
    print(f"{label:<26} {len(calls)} in {wall:6.2f} s ({len(calls) / wall:6.1f}/s)  {percentiles(durations)}  "
          f"CPU crispd {crispd:5.2f} s, children {helpers:5.2f} s ({(crispd + helpers) / len(calls) * 1000:5.1f} "
          "ms per pod)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--parallel", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--shared-pid", action="store_true")
    parser.add_argument("--py-spy", default="", help="py-spy binary; its raw output goes to --profile")
    parser.add_argument("--profile", default="/tmp/crispd-profile.txt")
    args = parser.parse_args()
    ns = cri.NamespaceOption(pid=cri.POD if args.shared_pid else cri.CONTAINER)
    with tempfile.TemporaryDirectory(prefix="crisp-bench-") as tmp:
        base = Path(tmp)
        pods = Pods(base)
        pods.daemon.config_path.write_text(pods.config_text('[metrics]\naddress = ""\n'))
        pods.daemon.start()
        spy = None
        try:
            assert pods.daemon.proc is not None
            rt = pods.daemon.runtime
            meter = CpuMeter(pods.daemon.proc.pid)
            warm = pods.run(pod_config("warmup"))
            rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=warm))
            if args.py_spy:
                spy = subprocess.Popen([args.py_spy, "record", "--format", "raw", "--threads", "--idle",
                                        "--subprocesses", "-r", "200", "-o", args.profile, "--pid", str(meter.pid)],
                                       stdout=subprocess.DEVNULL)
                time.sleep(1)
            print(f"{args.pods} pods, {args.parallel} at a time, {'shared' if args.shared_pid else 'own'} PID "
                  f"namespace; load {os.getloadavg()[0]:.2f}", flush=True)
            for r in range(args.rounds):
                configs = [pod_config(f"r{r}p{i}", linux=cri.LinuxPodSandboxConfig(
                    security_context=cri.LinuxSandboxSecurityContext(namespace_options=ns)))
                    for i in range(args.pods)]
                ids: list[str] = []
                phase("RunPodSandbox", meter, args.parallel,
                      [functools.partial(lambda c, out: out.append(pods.run(c)), c, ids) for c in configs])
                phase("StopPodSandbox, all at once", meter, len(ids), [
                    functools.partial(rt.StopPodSandbox, cri.StopPodSandboxRequest(pod_sandbox_id=i), timeout=300)
                    for i in ids])
                phase("RemovePodSandbox, all", meter, len(ids), [
                    functools.partial(rt.RemovePodSandbox, cri.RemovePodSandboxRequest(pod_sandbox_id=i),
                                      timeout=300) for i in ids])
        finally:
            if spy is not None:
                spy.send_signal(2)
                spy.wait(60)
            pods.remove_all_pods()
            pods.daemon.stop()
            for m in reversed(mounts_under(base)):
                subprocess.run(["umount", "-l", m], check=False)
            pods.cleanup_host()


if __name__ == "__main__":
    main()
