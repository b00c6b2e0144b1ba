"""Figures, not a test: the soak of issue 18. Pod + container cycles (run pod, create, start, exec, stop, remove)
through a real crispd, 10 at a time.

Phase 1, no kills: crispd's RSS (median of the first and of the last window of cycles after a warm-up) and its
open fds (idle, after the warm-up and at the end). Phase 2, the same cycles with a kill -9 of crispd every
--kill-every cycles: each step a kill interrupts is retried once crispd is back, as the kubelet would. At the end,
everything crisp could leak is counted (mounts, netns pins, veths, IP leases, cgroups, processes, rows, dirs,
hostPort rules); the exit status is 1 if anything was left.

Run as root from the repository: .venv/bin/python tests/bench/soak.py [--cycles 1000] [--parallel 10]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc

from cri import api as cri
from tests.cri.pods import Pods, pod_config
from tests.imagetools import busybox_image
from tests.leaks import mounts_under, wait_until
from tests.registrytools import Pusher, running_registry

STEPS = ("run", "create", "start", "exec", "stop", "remove")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Soak:
    def __init__(self, pods: Pods, image: str) -> None:
        self.pods = pods
        self.image = image
        self.ready = threading.Event()
        self.ready.set()
        self.restart_lock = threading.Lock()
        self.retries = 0
        self.failures: list[str] = []
        self.samples: list[tuple[float, int]] = []  # (RSS MB, fds) after each cycle, in completion order
        self.done = 0
        self.count_lock = threading.Lock()

    @property
    def pid(self) -> int:
        assert self.pods.daemon.proc is not None
        return self.pods.daemon.proc.pid

    def _step(self, step: str, state: dict[str, str], config: cri.PodSandboxConfig) -> None:
        rt = self.pods.daemon.runtime
        if step == "run":
            state["pod"] = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=config), timeout=120).pod_sandbox_id
        elif step == "create":
            container = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="app"),
                                            image=cri.ImageSpec(image=self.image), command=["sleep", "3600"])
            state["container"] = rt.CreateContainer(cri.CreateContainerRequest(
                pod_sandbox_id=state["pod"], config=container, sandbox_config=config), timeout=120).container_id
        elif step == "start":
            try:
                rt.StartContainer(cri.StartContainerRequest(container_id=state["container"]), timeout=120)
            except grpc.RpcError as err:
                if err.code() is not grpc.StatusCode.FAILED_PRECONDITION or not state.get("retried"):
                    raise  # a retry finds it started before the kill: that is fine
        elif step == "exec":
            reply = rt.ExecSync(cri.ExecSyncRequest(container_id=state["container"], cmd=["echo", "soak"],
                                                    timeout=30), timeout=60)
            if reply.stdout != b"soak\n":
                raise RuntimeError(f"exec said {reply.stdout!r}")
        elif step == "stop":
            rt.StopContainer(cri.StopContainerRequest(container_id=state["container"], timeout=0), timeout=120)
            rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=state["pod"]), timeout=120)
        else:
            rt.RemoveContainer(cri.RemoveContainerRequest(container_id=state["container"]), timeout=120)
            rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=state["pod"]), timeout=120)

    def cycle(self, name: str) -> None:
        config = pod_config(name)
        state: dict[str, str] = {}
        for step in STEPS:
            for attempt in range(3):
                self.ready.wait()
                try:
                    self._step(step, state, config)
                    break
                except grpc.RpcError as err:
                    if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) or attempt == 2:
                        self.failures.append(f"{name} {step}: {err.code().name} {err.details()}")
                        return
                    # crispd was killed under this step: retry it once it is back
                    with self.count_lock:
                        self.retries += 1
                    state["retried"] = "1"
                    time.sleep(0.2)
        with self.count_lock:
            self.done += 1
            try:
                self.samples.append((rss_mb(self.pid), fd_count(self.pid)))
            except (OSError, AssertionError):
                pass  # crispd is being restarted

    def kill_and_restart(self) -> None:
        with self.restart_lock:
            self.ready.clear()
            daemon = self.pods.daemon
            assert daemon.proc is not None
            os.kill(daemon.proc.pid, signal.SIGKILL)
            daemon.proc.wait(30)
            daemon.stop()
            daemon.socket.unlink(missing_ok=True)
            daemon.start(timeout=180)
            self.ready.set()

    def run(self, prefix: str, cycles: int, parallel: int, kill_every: int = 0) -> tuple[float, int]:
        """Run the cycles; with kill_every, a kill -9 each time that many more cycles have finished."""
        started = time.monotonic()
        kills = 0
        before = self.done
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            futures = [pool.submit(self.cycle, f"{prefix}{i}") for i in range(cycles)]
            if kill_every:
                next_kill = kill_every
                while not all(f.done() for f in futures):
                    if next_kill <= self.done - before < cycles:
                        self.kill_and_restart()
                        kills += 1
                        next_kill += kill_every
                    time.sleep(0.05)
            for future in futures:
                future.result()
        return time.monotonic() - started, kills


def window(samples: list[tuple[float, int]], first: bool, size: int) -> list[float]:
    part = samples[:size] if first else samples[-size:]
    return [rss for rss, _ in part]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=200, help="cycles per phase (the issue's soak: 1000)")
    parser.add_argument("--parallel", type=int, default=10)
    parser.add_argument("--kill-every", type=int, default=0, help="phase 2: cycles between kills (cycles / 10)")
    args = parser.parse_args()
    kill_every = args.kill_every or max(1, args.cycles // 10)
    warmup = max(1, args.cycles // 10)
    size = max(1, min(100, (args.cycles - warmup) // 3))
    with tempfile.TemporaryDirectory(prefix="crisp-soak-") as tmp:
        base = Path(tmp)
        with running_registry(base / "registry") as reg:
            Pusher(reg.url).image("soak/busybox", busybox_image(), "latest")
            image = f"{reg.host}/soak/busybox:latest"
            (base / "crispd").mkdir()
            pods = Pods(base / "crispd")
            pods.daemon.config_path.write_text(pods.config_text('[metrics]\naddress = ""\n'))
            pods.daemon.start()
            try:
                pods.daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=image)), timeout=120)
                soak = Soak(pods, image)
                soak.run("warm", warmup, args.parallel)
                idle_fds = fd_count(soak.pid)
                soak.samples.clear()
                seconds, _ = soak.run("plain", args.cycles, args.parallel)
                first, last = window(soak.samples, True, size), window(soak.samples, False, size)
                end_fds = fd_count(soak.pid)
                print(f"phase 1: {args.cycles} cycles (run pod, create, start, exec, stop, remove), "
                      f"{args.parallel} in parallel, no kills: {seconds:.0f} s ({args.cycles / seconds:.1f} "
                      f"cycles/s), {len(soak.failures)} failed")
                print(f"  crispd RSS: median {statistics.median(first):.1f} MB over the first {size} cycles after "
                      f"{warmup} of warm-up, {statistics.median(last):.1f} MB over the last {size} "
                      f"(x{statistics.median(last) / statistics.median(first):.3f})")
                print(f"  crispd open fds, idle: {idle_fds} after the warm-up, {end_fds} at the end")
                phase1_failures = list(soak.failures)

                soak.failures.clear()
                soak.samples.clear()
                seconds, kills = soak.run("killed", args.cycles, args.parallel, kill_every)
                print(f"phase 2: {args.cycles} cycles with a kill -9 of crispd every ~{kill_every} cycles: "
                      f"{kills} kills, {seconds:.0f} s, {soak.retries} steps retried after a kill, "
                      f"{len(soak.failures)} cycles failed")
                if soak.samples:
                    print(f"  crispd RSS at the end: {soak.samples[-1][0]:.1f} MB, open fds {fd_count(soak.pid)}")
                for failure in (phase1_failures + soak.failures)[:20]:
                    print(f"  failed: {failure}")
                rt = pods.daemon.runtime
                for item in rt.ListPodSandbox(cri.ListPodSandboxRequest()).items:
                    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=item.id))
                wait_until(lambda: pods.leaks() == [], 10)
                leaks = pods.leaks()
                kinds: dict[str, int] = {}
                for leak in leaks:
                    kinds[leak.split()[0]] = kinds.get(leak.split()[0], 0) + 1
                print(f"left behind at the end: {len(leaks)}" + (f" {kinds}" if kinds else
                      " (no mount, netns pin, veth, IP lease, cgroup, process, row, dir or hostPort rule)"))
                for leak in leaks[:20]:
                    print(f"  {leak}")
                return 1 if leaks or phase1_failures or soak.failures else 0
            finally:
                pods.daemon.stop()
                for m in reversed(mounts_under(base)):
                    subprocess.run(["umount", "-l", m], check=False)
                pods.cleanup_host()


if __name__ == "__main__":
    sys.exit(main())
