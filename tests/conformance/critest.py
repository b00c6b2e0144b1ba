"""Run critest (cri-tools' validation suite, built by scripts/build-k8s-tools) against a crispd and judge its
report against expected.toml, the one list of every spec that does not pass on the project's hosts.

A spec's outcome is judged by its full ginkgo text (the names of its containers and its own, space-separated, as
`--ginkgo.focus` matches them). On the host every spec must pass unless expected.toml lists it with the outcome it
has here; a listed spec marked `vm = true` runs in the VM tier (tests/vm/guest/test_critest.py), where it must
pass. A failure, an unexpected skip, an unexpected pass, and a listed name critest does not have all fail a tier.
"""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

EXPECTED = Path(__file__).with_name("expected.toml")
STATES = ("passed", "failed", "skipped")
# ginkgo's other terminal states are failures too
SUITE = "CRI validation"  # the description cmd/critest gives ginkgo.RunSpecs
RE2_META = frozenset("\\.+*?()|[]{}^$")
FAILED_STATES = frozenset({"failed", "panicked", "timedout", "interrupted", "aborted"})


@dataclass(frozen=True)
class Spec:
    name: str
    state: str  # passed | failed | skipped
    message: str  # the failure, or the reason critest gave for a skip
    seconds: float


@dataclass(frozen=True)
class Report:
    """The specs that ran (those the focus and critest's own skip of its benchmarks left out are not in it)."""

    specs: dict[str, Spec]
    suite_failures: list[str]  # BeforeSuite / AfterSuite nodes that failed: then nothing is trustworthy
    seconds: float
    exit_status: int
    output: Path  # critest's own output (ginkgo -v), or the directory of the parallel run's outputs

    def counts(self) -> str:
        count = Counter(spec.state for spec in self.specs.values())
        return "critest: " + " ".join(f"{state} {count[state]}" for state in STATES)


@dataclass(frozen=True)
class Expectation:
    name: str
    host: str  # skipped | failed: the outcome on the project's hosts (passed: listed only to run in the VM too)
    reason: str
    vm: bool  # runs in the VM tier, where it must pass


def load_expectations(path: Path = EXPECTED) -> dict[str, Expectation]:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    found: dict[str, Expectation] = {}
    for entry in data.get("spec", []):
        unknown = set(entry) - {"name", "host", "reason", "vm"}
        host_ok = entry.get("host") in ("skipped", "failed") or (entry.get("host") == "passed" and entry.get("vm"))
        if unknown or not host_ok or not entry.get("reason"):
            raise ValueError(f"{path}: bad entry {entry} (name, host = skipped|failed, or passed with vm = true, "
                             "reason, optional vm)")
        if entry["name"] in found:
            raise ValueError(f"{path}: {entry['name']!r} is listed twice")
        found[entry["name"]] = Expectation(entry["name"], entry["host"], entry["reason"], bool(entry.get("vm")))
    return found


def focus_regex(names: list[str]) -> str:
    """A --ginkgo.focus that selects exactly these specs: Go's RE2 syntax, every metacharacter escaped (not with
    re.escape, which also escapes spaces and dashes, escapes RE2 rejects)."""
    quoted = ("".join("\\" + c if c in RE2_META else c for c in name) for name in sorted(names))
    # ginkgo matches the focus against the suite's description, a space, then the spec's full text
    return f"^{SUITE} (" + "|".join(quoted) + ")$"


def run(critest: Path, endpoint: str, workdir: Path, focus: list[str] | None = None, handler: str = "",
        timeout: float = 1800.0, parallel: int = 1, nri_socket: str = "") -> Report:
    """Run critest's validation suite (or the `focus` specs) against `endpoint`, in workdir. With `parallel` > 1, as
    critest's own parallel mode (ginkgo's) does, but without the ginkgo CLI: the specs not labelled Serial are dealt
    to `parallel` critest processes at once, then the Serial ones (the image specs, which pull and remove images
    others use) run alone. With `nri_socket`, critest's NRI specs (all Serial) connect their plugins there."""
    if parallel <= 1:
        return _run_once(critest, endpoint, workdir, focus, handler, timeout, nri_socket)
    started = time.monotonic()
    specs = list_specs(critest, workdir / "dry-run", focus)
    free = sorted(name for name, serial in specs.items() if not serial)
    shards = [free[i::parallel] for i in range(parallel)]
    with ThreadPoolExecutor(parallel) as pool:
        reports = list(pool.map(lambda i: _run_once(critest, endpoint, workdir / f"shard{i}", shards[i], handler,
                                                    timeout, nri_socket), range(parallel)))
    serial = sorted(name for name, is_serial in specs.items() if is_serial)
    if serial:
        reports.append(_run_once(critest, endpoint, workdir / "serial", serial, handler, timeout, nri_socket))
    return Report({name: spec for report in reports for name, spec in report.specs.items()},
                  [failure for report in reports for failure in report.suite_failures], time.monotonic() - started,
                  max(report.exit_status for report in reports), workdir)


def list_specs(critest: Path, workdir: Path, focus: list[str] | None = None) -> dict[str, bool]:
    """The specs a run would run (critest's benchmarks left out), each with whether it is labelled Serial."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [str(critest), "--runtime-endpoint=unix:///nonexistent", f"--config={workdir / 'crictl.yaml'}",
            "--ginkgo.dry-run", "--ginkgo.no-color", f"--ginkgo.json-report={workdir / 'critest.json'}"]
    if focus is not None:
        argv.append(f"--ginkgo.focus={focus_regex(focus)}")
    subprocess.run(argv, cwd=workdir, capture_output=True, timeout=120, check=True)
    found: dict[str, bool] = {}
    for suite in json.loads((workdir / "critest.json").read_text()):
        for node in suite["SpecReports"]:
            if node["LeafNodeType"] == "It" and node["State"] == "passed":
                labels = {*(node.get("LeafNodeLabels") or []),
                          *(label for labels in node.get("ContainerHierarchyLabels") or [] for label in labels)}
                found[" ".join([*node["ContainerHierarchyTexts"], node["LeafNodeText"]])] = "Serial" in labels
    return found


def _run_once(critest: Path, endpoint: str, workdir: Path, focus: list[str] | None, handler: str,
              timeout: float, nri_socket: str = "") -> Report:
    """One critest process: its output goes to workdir/critest.log, its ginkgo JSON report to
    workdir/critest.json."""
    workdir.mkdir(parents=True, exist_ok=True)
    report = workdir / "critest.json"
    output = workdir / "critest.log"
    argv = [str(critest), f"--runtime-endpoint={endpoint}", f"--image-endpoint={endpoint}",
            # not the host's /etc/crictl.yaml
            f"--config={workdir / 'crictl.yaml'}", "--ginkgo.no-color", "--ginkgo.v",
            f"--ginkgo.json-report={report}", f"--ginkgo.timeout={int(timeout)}s"]
    if handler:
        argv.append(f"--runtime-handler={handler}")
    if nri_socket:
        argv.append(f"--nri-socket={nri_socket}")
    if focus is not None:
        argv.append(f"--ginkgo.focus={focus_regex(focus)}")
    (workdir / "crictl.yaml").write_text(f"runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\n")
    started = time.monotonic()
    with open(output, "wb") as out:
        # in workdir: specs write relative log paths and temporary files there
        proc = subprocess.run(argv, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, timeout=timeout + 60,
                              check=False)
    seconds = time.monotonic() - started
    if not report.exists():
        tail = "\n".join(output.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"critest wrote no report (exit status {proc.returncode}):\n{tail}")
    return parse(json.loads(report.read_text()), seconds, proc.returncode, output)


def parse(suites: list[dict[str, object]], seconds: float, exit_status: int, output: Path) -> Report:
    specs: dict[str, Spec] = {}
    suite_failures: list[str] = []
    for suite in suites:
        for node in suite.get("SpecReports", []):  # type: ignore[attr-defined]
            state = str(node["State"])
            message = str((node.get("Failure") or {}).get("Message", ""))
            if node["LeafNodeType"] != "It":
                if state in FAILED_STATES:
                    suite_failures.append(f"{node['LeafNodeType']}: {message}")
                continue
            if state == "skipped" and not node.get("NumAttempts"):
                continue  # filtered out (the focus, or critest's skip of its benchmarks): never ran
            name = " ".join([*node["ContainerHierarchyTexts"], node["LeafNodeText"]])
            state = "failed" if state in FAILED_STATES else state
            specs[name] = Spec(name, state, message, float(node.get("RunTime", 0)) / 1e9)
    return Report(specs, suite_failures, seconds, exit_status, output)


def problems(report: Report, expected: dict[str, Expectation], vm: bool = False,
             focus: list[str] | None = None) -> list[str]:
    """What makes a run fail: on the host (vm=False) every spec has its expected outcome and every listed name is
    a spec critest ran; in the VM every focused spec ran and passed."""
    found = [f"critest {failure}" for failure in report.suite_failures]
    for spec in sorted(report.specs.values(), key=lambda s: s.name):
        listed = expected.get(spec.name)
        want = "passed" if vm or listed is None else listed.host
        if spec.state != want:
            why = f" (listed: {listed.reason})" if listed and not vm else ""
            detail = f"\n    {spec.message.strip()}" if spec.message.strip() else ""
            found.append(f"{spec.state}, expected {want}{why}: {spec.name}{detail}")
    names = focus if vm else list(expected)
    for name in sorted(set(names or []) - set(report.specs)):
        found.append(f"did not run, expected {'passed' if vm else expected[name].host}: {name} "
                     "(is the name in expected.toml still critest's?)")
    return found
