"""Figures for cri/oci: how long building a container spec takes (pure, no I/O), and the size of config.json.

Run: .venv/bin/python -m tests.bench.oci_spec_build  (prints figures; not a test)
"""

from __future__ import annotations

import json
import statistics
import time

from cri import api as pb
from cri.oci import build_container_spec
from tests.unit.oci_support import container_config, inputs

RUNS = 500


def _time(config: pb.ContainerConfig) -> tuple[float, float, int]:
    spec_inputs = inputs(config)
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        spec = build_container_spec(spec_inputs)
        samples.append(time.perf_counter() - start)
    samples.sort()
    return statistics.median(samples) * 1e3, samples[int(RUNS * 0.99)] * 1e3, len(json.dumps(spec))


def main() -> None:
    cases = {
        "unconfined, defaults": container_config(),
        "RuntimeDefault seccomp, run_as_username, caps": container_config(
            linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                run_as_username="alice", seccomp=pb.SecurityProfile(),
                capabilities=pb.Capability(add_capabilities=["NET_ADMIN"], drop_capabilities=["MKNOD"])))),
    }
    for name, config in cases.items():
        median, p99, size = _time(config)
        print(f"{name:50s} median {median:.3f} ms  p99 {p99:.3f} ms  config.json {size} bytes")


if __name__ == "__main__":
    main()
