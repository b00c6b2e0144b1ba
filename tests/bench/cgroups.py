"""Figures for the cgroup v2 layer on this host (not a test): as root, `python -m tests.bench.cgroups [ROUNDS]`.

Prints the median and 90th percentile, over ROUNDS (50), of each step a container start and removal costs:
create a container cgroup (under a pod cgroup crisp made), check controllers, apply limits, build + load + attach
the device filter, move a process in, read stats, kill, remove. Everything is made under /crisp-bench-<unique>
and removed.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator

from runtime.cgroups import CgroupV2Manager, rules_from_oci
from runtime.cgroups.devices import with_default_rules
from runtime.cgroups.ebpf import build_program

UNPRIVILEGED = rules_from_oci([{"allow": False, "access": "rwm"}])
RESOURCES = {"unified": {"cgroup.max.descendants": "100"}}  # a core file: writable without controllers

times: dict[str, list[float]] = defaultdict(list)


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    times[name].append((time.perf_counter() - start) * 1000)


def one_round(manager: CgroupV2Manager, path: str) -> None:
    with timed("missing_controllers"):
        manager.missing_controllers(RESOURCES, path)
    with timed("create"):
        cg = manager.create(path)
    with timed("apply"):
        cg.apply(RESOURCES)
    with timed("device filter"):
        cg.set_device_filter(UNPRIVILEGED)
    proc = subprocess.Popen(["sleep", "100"], close_fds=True)
    try:
        with timed("add_process"):
            cg.add_process(proc.pid)
        with timed("stats"):
            cg.stats()
        with timed("kill (until empty)"):
            cg.kill()
    finally:
        proc.kill()
        proc.wait()
    with timed("remove"):
        cg.remove()
    with timed("build program"):
        build_program(with_default_rules(UNPRIVILEGED))


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    manager = CgroupV2Manager.discover()
    base = manager.create(f"/crisp-bench-{uuid.uuid4().hex[:12]}")
    try:
        pod = manager.create(f"{base.path}/pod-bench")
        for i in range(rounds):
            one_round(manager, f"{pod.path}/crisp-c{i}")
    finally:
        base.kill()
        base.remove()
    print(f"cgroup v2 at {manager.mount}, {rounds} rounds; milliseconds")
    print(f"device filter for an unprivileged container: {len(build_program(with_default_rules(UNPRIVILEGED))) // 8}"
          " eBPF instructions")
    for name, values in times.items():
        values.sort()
        p90 = values[max(0, int(len(values) * 0.9) - 1)]
        print(f"  {name:20} median {statistics.median(values):7.3f}   p90 {p90:7.3f}")


if __name__ == "__main__":
    main()
