"""Figures, not a test: where RunPodSandbox's time goes inside crispd, one pod at a time, on the built-in bridge.

crispd runs under tests/bench/runp_probe.py, which times the handler's steps (name reservation, the controller's
steps between its debug points, the network setup running alongside, the record). Prints, over N pods, the median
client-side RunPodSandbox, the median time inside the handler, and per step its median duration and median start
(ms from the handler's start). With `--compare DIR` a second crispd runs DIR's code under the same probe, and the
pods alternate between the two sides (ABBA), so both see the same load. `--shared-pid` gives each pod a pod init.
Run as root from the repository: .venv/bin/python tests/bench/runp_steps.py [--pods 30] [--compare DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cri import api as cri
from tests.bench import ab
from tests.cri.pods import pod_config

PROBE = Path(__file__).resolve().parent / "runp_probe.py"


class Side(ab.Side):
    def __init__(self, label: str, base: Path, ref: str, program: list[str] | None) -> None:
        root = Path(program[0]).parents[2] if program else Path(__file__).resolve().parents[2]
        super().__init__(label, base, ref, [str(root / ".venv/bin/python"), str(PROBE)])
        self.probe_file = base / "probe.jsonl"
        self.pods.daemon.env = {"CRISP_RUNP_PROBE": str(self.probe_file), "CRISP_PROBE_ROOT": str(root)}
        self.client: list[float] = []

    def run_once(self, name: str, shared_pid: bool) -> None:
        ns = cri.NamespaceOption(pid=cri.POD if shared_pid else cri.CONTAINER)
        config = pod_config(name, linux=cri.LinuxPodSandboxConfig(
            security_context=cri.LinuxSandboxSecurityContext(namespace_options=ns)))
        began = time.perf_counter()
        self.pods.run(config)
        self.client.append(time.perf_counter() - began)

    def spans(self, skip: int) -> list[list[tuple[str, float, float]]]:
        return [json.loads(line) for line in self.probe_file.read_text().splitlines()][skip:]


def report(side: Side, skip: int) -> None:
    runs = side.spans(skip)
    durations: dict[str, list[float]] = defaultdict(list)
    starts: dict[str, list[float]] = defaultdict(list)
    order: dict[str, float] = {}
    for spans in runs:
        for name, began, ended in spans:
            durations[name].append(ended - began)
            starts[name].append(began)
    for name in durations:
        order[name] = statistics.median(starts[name])
    print(f"{side.label}: {len(runs)} pods")
    print("  " + ab.summary("RunPodSandbox, client side", side.client))
    for name in sorted(order, key=lambda n: (order[n], n)):
        d, s = statistics.median(durations[name]), statistics.median(starts[name])
        if name.startswith("point "):
            print(f"    at {s:6.2f} ms  {name}")
        else:
            print(f"    at {s:6.2f} ms  {name:<32} median {d:6.2f} ms  p95 "
                  f"{sorted(durations[name])[round(0.95 * (len(durations[name]) - 1))]:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=30)
    parser.add_argument("--shared-pid", action="store_true")
    parser.add_argument("--compare", type=Path, help="another checkout whose code runs side by side")
    args = parser.parse_args()
    with ab.running_sides(Side, args.compare) as sides:
        for side in sides:
            side.pods.daemon.start()
            for i in range(3):  # warm-up, not counted
                side.run_once(f"warmup{i}", args.shared_pid)
            side.client.clear()
        for i in range(args.pods):
            for side in sides if i % 2 == 0 else sides[::-1]:
                side.run_once(f"p{i}", args.shared_pid)
                time.sleep(0.05)  # what the call left to do in the background is not the next one's
        for side in sides:
            report(side, skip=3)


if __name__ == "__main__":
    main()
