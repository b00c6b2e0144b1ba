"""crisp and containerd side by side in one run: issue 17's figures and the ratios its "Done when" judges.

    .venv/bin/python -m tests.bench.vs_containerd [--reps 20] [--containerd unix:///.../containerd.sock]
                                                  [--handlers builtin,runc] [--pods 10] [--many 30]
                                                  [--skip-critest]

crisp: a crispd on its own temporary root, socket, bridge and metrics port, pulling the tests' images from their
loopback registry (tests/images), one side per RuntimeClass handler ("builtin" is crisp's default handler "").
containerd: whatever answers on --containerd (e.g. ../shared/harness/containerd-up's endpoint, whose registry serves
the same upstream names); without it, crisp's figures only. The same crictl and critest (tests/tools) drive every
side, each with its own crictl config.

- crictl latency, median of --reps: `crictl version` (the client's floor F), runp, create, start and their sum for a
  busybox `sleep 3600` pod, `crictl exec CID true` and `crictl exec -s CID true` in one running container. Each rep
  times every side once, in an order that alternates rep by rep, so that the host's load weighs on all alike; each
  rep's pod is stopped and removed outside the timed part.
- critest -benchmark (tests/bench/critest_benchmark.yaml): each operation's median, side by side.
- throughput: --many pods (runp+create+start each) made 10 at a time, in pods per second, then all of them removed
  at once (stopp+rmp, one client per pod), and the daemon's CPU seconds over both; one side after the other.
- memory with --pods pods running (shared PID namespace, so crisp starts a pod init; containerd's counterpart is the
  pod's pause process): PSS of each shim and pod init, RSS of the daemon (the process listening on the endpoint's
  socket), and the summed PSS of the daemon's own child processes other than shims (crisp: the shim zygote and
  the network helper).

Prints figures; asserts nothing. Everything it makes is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests import tools
from tests.bench.procmem import smaps_rollup
from tests.cri.pods import Pods, running_pods
from tests.images import serve
from tests.leaks import children_of

IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
SETTINGS = Path(__file__).with_name("critest_benchmark.yaml")
POD_PID_NAMESPACE = 0  # NamespaceMode POD: the pod's containers share one PID namespace
LATENCY = ("version", "runp", "create", "start", "runp+create+start", "exec", "exec --sync")
# issue 17's bounds on (crisp - floor) / (containerd - floor): figure -> (floors taken off, bound per handler)
TARGETS = {"runp+create+start": (3, {"builtin": 0.5, "runc": 0.7}), "exec": (1, {}), "exec --sync": (1, {})}
DEFAULT_TARGET = 0.5


@dataclass
class Side:
    """One runtime under measurement: its endpoint, the handler its pods get, and the pods made and not removed."""

    label: str
    kind: str  # "crisp" or "containerd"
    endpoint: str
    handler: str
    work: Path
    pods: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.config = self.work / "crictl.yaml"
        self.config.write_text(f"runtime-endpoint: {self.endpoint}\nimage-endpoint: {self.endpoint}\ntimeout: 300\n")

    @property
    def socket(self) -> str:
        return self.endpoint.removeprefix("unix://")

    def crictl(self, *args: str, check: bool = True) -> tuple[str, float]:
        """crictl's output and its wall-clock time in ms (client start-up included, as a kubelet-less user sees)."""
        argv = [str(tools.tool("crictl")), "--config", str(self.config), *args]
        began = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        elapsed = (time.perf_counter() - began) * 1000
        if check and proc.returncode != 0:
            raise RuntimeError(f"{self.label}: crictl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout.strip(), elapsed

    def run_pod(self) -> tuple[str, str, list[float]]:
        """A pod with one busybox `sleep 3600` container: (pod id, container id, [runp, create, start] ms)."""
        name = f"vs-{uuid.uuid4().hex[:10]}"
        logs = self.work / "logs" / name
        logs.mkdir(parents=True)
        pod = {"metadata": {"name": name, "namespace": "vs-containerd", "uid": name, "attempt": 0},
               "log_directory": str(logs),
               "linux": {"security_context": {"namespace_options": {"pid": POD_PID_NAMESPACE}}}}
        container = {"metadata": {"name": "sleep"}, "image": {"image": IMAGE}, "command": ["sleep", "3600"],
                     "log_path": "sleep.log", "linux": {}}
        pod_file, container_file = self.work / f"{name}-pod.json", self.work / f"{name}-ctr.json"
        pod_file.write_text(json.dumps(pod))
        container_file.write_text(json.dumps(container))
        pod_id, runp = self.crictl("runp", *(["--runtime", self.handler] if self.handler else []), str(pod_file))
        self.pods.append(pod_id)
        cid, create = self.crictl("create", pod_id, str(container_file), str(pod_file))
        _, start = self.crictl("start", cid)
        return pod_id, cid, [runp, create, start]

    def remove_pod(self, pod_id: str) -> None:
        self.crictl("stopp", pod_id, check=False)
        self.crictl("rmp", "-f", pod_id, check=False)
        self.pods.remove(pod_id)

    def cleanup(self) -> None:
        for pod_id in list(self.pods):
            self.remove_pod(pod_id)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def latency(sides: list[Side], reps: int) -> dict[str, dict[str, float]]:
    """label -> figure -> median ms."""
    samples: dict[str, dict[str, list[float]]] = {side.label: {name: [] for name in LATENCY} for side in sides}
    execs = {}
    for side in sides:
        side.crictl("pull", IMAGE)
        execs[side.label] = side.run_pod()[1]
        side.crictl("exec", execs[side.label], "true")  # warm-up, not counted
    for rep in range(reps):
        for side in sides if rep % 2 == 0 else reversed(sides):
            figures = samples[side.label]
            figures["version"].append(side.crictl("version")[1])
            pod_id, _, times = side.run_pod()
            for name, ms in zip(("runp", "create", "start"), times, strict=True):
                figures[name].append(ms)
            figures["runp+create+start"].append(sum(times))
            side.remove_pod(pod_id)
            figures["exec"].append(side.crictl("exec", execs[side.label], "true")[1])
            figures["exec --sync"].append(side.crictl("exec", "-s", execs[side.label], "true")[1])
    for side in sides:
        side.cleanup()
    return {label: {name: median(values) for name, values in figures.items()} for label, figures in samples.items()}


def critest_benchmark(side: Side) -> dict[str, float]:
    """critest -benchmark against the side: '<benchmark> <operation>' -> median ms (and each benchmark's whole
    cycle), from the *_benchmark_data.json files critest writes."""
    out = side.work / "critest-benchmark"
    out.mkdir()
    argv = [str(tools.tool("critest")), "-benchmark", f"--runtime-endpoint={side.endpoint}",
            f"--image-endpoint={side.endpoint}", f"--config={side.config}", f"--benchmarking-params-file={SETTINGS}",
            f"--benchmarking-output-dir={out}", "--ginkgo.no-color"]
    if side.handler:
        argv.append(f"--runtime-handler={side.handler}")
    with open(out / "critest.log", "wb") as log:
        code = subprocess.run(argv, cwd=out, stdout=log, stderr=subprocess.STDOUT, timeout=3600, check=False)
    if code.returncode != 0:
        tail = (out / "critest.log").read_text(errors="replace").splitlines()[-15:]
        print(f"  {side.label}: critest -benchmark exited {code.returncode}:", *tail, sep="\n    ")
    found: dict[str, float] = {}
    for path in sorted(out.glob("*_benchmark_data.json")):
        data = json.loads(path.read_text())
        points = data.get("datapoints") or []
        benchmark = path.name.removesuffix("_benchmark_data.json")
        for index, operation in enumerate(data["operationsNames"]):
            found[f"{benchmark} {operation}"] = median([p["operationsDurationsNs"][index] / 1e6 for p in points])
        found[f"{benchmark} (whole cycle)"] = median([(p["endTime"] - p["startTime"]) / 1e6 for p in points])
    return found


def processes(name: str, words: set[str]) -> list[int]:
    """The pids whose comm is `name` and whose command line holds one of `words` (crisp's processes set a title of
    one string, `crisp-shim <container id>`: split at spaces too)."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name and \
                    words & set((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().split()):
                found.append(int(entry.name))
    return found


def pod_inits(pod_ids: set[str]) -> list[int]:
    """crisp's pod inits (`catatonit -P`, which does not name its pod) of these pods: their output goes to a
    `podinit.log` in the pod's directory (`<state>/sandboxes/<pod id>/...`)."""
    found = []
    for pid in processes("catatonit", {"-P"}):
        with contextlib.suppress(OSError):
            if pod_ids & set(Path(os.readlink(f"/proc/{pid}/fd/2")).parts):
                found.append(pid)
    return found


def listener_pid(socket: str) -> int:
    """The process holding the listening unix socket at `socket` (the daemon serving the endpoint)."""
    inodes = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == socket and int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON
            inodes.add(f"socket:[{fields[6]}]")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                    return int(entry.name)
    raise RuntimeError(f"no process listens on {socket}")


def pss_mb(pids: list[int]) -> str:
    values = [smaps_rollup(pid)["pss"] / 1024 for pid in pids]
    return f"{median(values):.2f} ({len(values)})" if values else "none"


def memory(side: Side, count: int) -> dict[str, str]:
    """With `count` pods running: the median PSS of a shim and of a pod init (how many there are), daemon RSS in MB."""
    side.crictl("pull", IMAGE)
    made = [side.run_pod()[:2] for _ in range(count)]
    time.sleep(3)
    if side.kind == "crisp":
        shims = processes("crisp-shim", {cid for _, cid in made})
        inits = pod_inits({pod for pod, _ in made})
    else:
        shims = processes("containerd-shim", {side.socket})  # comm: the name's first 15 bytes
        # containerd's counterpart of a pod init: the pod's pause process, a child of its shim
        inits = [pid for shim in shims for pid in children_of(shim) & set(processes("pause", {"/pause"}))]
    daemon_pid = listener_pid(side.socket)
    daemon = smaps_rollup(daemon_pid)["rss"] / 1024
    # what the daemon keeps running besides (crisp: the shim zygote and the network helper), counted apart
    helpers = [smaps_rollup(pid)["pss"] / 1024 for pid in sorted(children_of(daemon_pid) - set(shims))]
    figures = {"shim PSS": pss_mb(shims), "pod init PSS": pss_mb(inits), "daemon RSS": f"{daemon:.1f}",
               "daemon's children PSS": f"{sum(helpers):.1f} ({len(helpers)})"}
    side.cleanup()
    return figures


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def throughput(side: Side, count: int, parallel: int = 10) -> dict[str, str]:
    """`count` pods made `parallel` at a time, then all removed at once: pods/s, removal wall time, daemon CPU."""
    side.crictl("pull", IMAGE)
    daemon = listener_pid(side.socket)
    cpu = cpu_seconds(daemon)
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        made = list(pool.map(lambda _: side.run_pod()[0], range(count)))
    made_in = time.perf_counter() - began
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        list(pool.map(side.remove_pod, made))
    removed_in = time.perf_counter() - began
    return {f"{parallel} at a time, pods/s": f"{count / made_in:.2f}",
            f"{count} removed at once, s": f"{removed_in:.1f}", "daemon CPU s": f"{cpu_seconds(daemon) - cpu:.1f}",
            "daemon RSS after, MB": f"{smaps_rollup(daemon)['rss'] / 1024:.1f}"}


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def table(title: str, rows: list[str], labels: list[str], cell: dict[str, dict[str, str]]) -> None:
    print(f"\n{title}")
    width = max(len(row) for row in rows) + 2
    columns = [max(16, len(label) + 2) for label in labels]
    print(" " * width + "".join(f"{label:>{column}}" for label, column in zip(labels, columns, strict=True)))
    for row in rows:
        print(f"{row:<{width}}" + "".join(f"{cell[label].get(row, '-'):>{column}}"
                                          for label, column in zip(labels, columns, strict=True)))


def handler_name(side: Side) -> str:
    return side.label.removeprefix("crisp ")


def report_latency(sides: list[Side], figures: dict[str, dict[str, float]], reference: Side | None) -> None:
    labels = [side.label for side in sides]
    table("crictl, median ms", list(LATENCY), labels,
          {label: {name: f"{ms:.1f}" for name, ms in figures[label].items()} for label in labels})
    if reference is None:
        return
    ref = figures[reference.label]
    print("\nratios crisp/containerd with the client floor F (crictl version) taken off both sides")
    for side in sides:
        if side is reference:
            continue
        own = figures[side.label]
        for name, (floors, bounds) in TARGETS.items():
            mine, theirs = own[name] - floors * own["version"], ref[name] - floors * ref["version"]
            figure = f"({name} - {floors}F)" if floors > 1 else f"({name} - F)"
            bound = bounds.get(handler_name(side), DEFAULT_TARGET)
            print(f"  {side.label:<14} {figure:<26} {mine:7.1f} / {theirs:7.1f} ms = {mine / theirs:5.2f}x"
                  f"   (issue 17: at most {bound}x)")


def report_critest(sides: list[Side], found: dict[str, dict[str, float]], reference: Side | None) -> None:
    labels = [side.label for side in sides]
    rows = sorted({op for ops in found.values() for op in ops})
    cells = {label: {op: f"{found[label][op]:.2f}" for op in found[label]} for label in labels}
    if reference is not None:
        for side in sides:
            if side is not reference:
                ratio = f"{side.label}/containerd"
                labels.append(ratio)
                cells[ratio] = {op: f"{found[side.label][op] / found[reference.label][op]:.2f}x" for op in rows
                                if op in found[side.label] and found[reference.label].get(op)}
    table("critest -benchmark, median ms per operation", rows, labels, cells)


def run(args: argparse.Namespace, base: Path) -> None:
    handlers = [name.strip() for name in args.handlers.split(",") if name.strip()]
    print(f"{time.strftime('%F %T')}, {os.cpu_count()} cpus, {load()}; reps {args.reps}, pods {args.pods}")
    (base / "crisp").mkdir()
    # crispd as deployed (containerd runs without its debug settings too): asyncio's debug mode, which the tests'
    # crispd runs in, cost 2-4 ms of every small RPC critest times (StatusContainer 6.3 ms against 2.1 ms)
    with serve(base / "images") as served, running_pods(base / "crisp", check_slow_callbacks=False,
                                                        pods=Pods(base / "crisp", served.crisp_config,
                                                                  debug=False)) as pods:
        sides = [Side(f"crisp {name}", "crisp", f"unix://{pods.daemon.socket}", "" if name == "builtin" else name,
                      base / f"side-{name}") for name in handlers]
        reference = None
        if args.containerd:
            reference = Side("containerd", "containerd", args.containerd, "", base / "side-containerd")
            sides.append(reference)
        try:
            report_latency(sides, latency(sides, args.reps), reference)
            print(f"({load()})")
            if not args.skip_critest:
                report_critest(sides, {side.label: critest_benchmark(side) for side in sides}, reference)
                print(f"({load()})")
            if args.many:
                rows = ["10 at a time, pods/s", f"{args.many} removed at once, s", "daemon CPU s",
                        "daemon RSS after, MB"]
                table(f"throughput: {args.many} pods", rows, [side.label for side in sides],
                      {side.label: throughput(side, args.many) for side in sides})
                print(f"({load()})")
            table(f"memory with {args.pods} pods running, MB (median, count)",
                  ["shim PSS", "pod init PSS", "daemon RSS", "daemon's children PSS"], [side.label for side in sides],
                  {side.label: memory(side, args.pods) for side in sides})
            print(f"({load()})")
        finally:
            for side in sides:
                side.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--containerd", default="", help="containerd's CRI endpoint, unix:///...")
    parser.add_argument("--handlers", default="builtin", help="crisp's handlers, comma-separated (builtin, runc)")
    parser.add_argument("--pods", type=int, default=10, help="pods running for the memory figures")
    parser.add_argument("--many", type=int, default=30, help="pods for the throughput figures (0: none)")
    parser.add_argument("--skip-critest", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through every cleanup, as Ctrl-C does
    base = Path(tempfile.mkdtemp(prefix="crisp-vs-"))
    try:
        run(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
