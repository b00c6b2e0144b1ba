"""One VM tier run: build what is missing, boot the VM once, run the given guest tests in it, read back results."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tests.vm.image import Image, ensure_image
from tests.vm.inputs import provide as provide_inputs
from tests.vm.machine import VmRun, boot
from tests.vm.settings import VmSettings, cache_lock
from tests.vm.wheels import REPO, build_crisp_wheel, build_wheelhouse, ensure_dependency_wheels

JOB = Path(__file__).with_name("guest-job.sh")


@dataclass(frozen=True)
class GuestResult:
    """The outcome of one guest test over all its phases (setup, call, teardown)."""

    nodeid: str
    outcome: str  # passed | failed | skipped | xfailed | xpassed
    text: str  # the failure (with captured output) or the skip reason
    seconds: float
    summaries: tuple[str, ...] = ()  # the test's record_property("summary", ...) lines


@dataclass
class TierRun:
    results: dict[str, GuestResult]
    vm: VmRun | None
    image: Image | None
    timings: dict[str, float] = field(default_factory=dict)
    collect_errors: list[str] = field(default_factory=list)
    error: str | None = None  # why the tier could not run the tests at all
    guest: str = "plain"

    def summary(self) -> str:
        parts = [f"{self.guest} guest: {len(self.results)} test results from one boot"]
        if self.image is not None:
            built = f"built in {self.image.build_seconds:.0f}s" if self.image.built_now else "cached"
            parts.append(f"image {self.image.key} ({built}, kernel {self.image.kernel_version})")
        for name in ("prepare", "vm"):
            if name in self.timings:
                parts.append(f"{name} {self.timings[name]:.1f}s")
        guest = [f"{name} at {value:.1f}s" for name, value in self.timings.items() if name.startswith("guest:")]
        if guest:
            parts.append("guest clock: " + ", ".join(guest))
        if self.vm is not None:
            parts.append(f"guest pytest exit status {self.vm.exit_status}")
        return "; ".join(parts)


def tools_dir() -> Path | None:
    """The Go tools' bin dir (the kubelet, crictl) when they are built: shared with the systemd guest."""
    from tests.tools import bin_dir  # imported when used: it runs scripts/build-k8s-tools --dir

    try:
        found = bin_dir()
    except (OSError, subprocess.CalledProcessError):
        return None
    return found if found.is_dir() else None


def run_guest_tests(nodeids: Sequence[str], settings: VmSettings | None = None,
                    stream: TextIO | None = None, guest: str = "plain") -> TierRun:
    """Boot the VM once and run `nodeids` (pytest node ids relative to the repo root) in it. The "systemd" guest
    also gets `make dist`'s wheelhouse (crisp and its run-time dependencies) in the io share and the Go tools."""
    settings = settings or VmSettings.from_env()
    started = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="crisp-vm-run-"))
    try:
        with cache_lock(settings.cache_dir):
            wheels = ensure_dependency_wheels(settings)
            image = ensure_image(settings, wheels)
        io_dir = run_dir / "io"
        build_crisp_wheel(io_dir / "crisp-wheel")
        tools = None
        if guest == "systemd":
            build_wheelhouse(io_dir / "wheelhouse", wheels)
            tools = tools_dir()
        (io_dir / "nodeids").write_text("".join(nodeid + "\n" for nodeid in nodeids))
        provide_inputs(io_dir, nodeids)
        (io_dir / "results.jsonl").write_bytes(b"")
        prepared = time.monotonic()
        # the systemd guest installs crisp with pip and runs a kubelet: under TCG that takes twice as long
        limit = settings.timeout * (2 if guest == "systemd" else 1)
        vm = boot(image, settings, run_dir, JOB.read_text(), REPO, timeout=limit, stream=stream, guest=guest,
                  tools_dir=tools)
        run = TierRun(results=_results(io_dir / "results.jsonl"), vm=vm, image=image, guest=guest)
        run.collect_errors = _collect_errors(io_dir / "results.jsonl")
        run.timings = {"prepare": prepared - started, "vm": vm.seconds, **_guest_timings(io_dir / "timings")}
        _check(run, nodeids)
        return run
    finally:
        if settings.keep_run_dir:
            print(f"crisp-vm: run directory kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def _check(run: TierRun, nodeids: Sequence[str]) -> None:
    """Say why results are missing: a VM that died, timed out, or a guest pytest that never ran a test."""
    vm = run.vm
    assert vm is not None
    # a node id may name a directory, a file or a class (`python -m tests.vm test FILE`): answered by any test in it
    missing = [nodeid for nodeid in nodeids
               if nodeid not in run.results
               and not any(done.startswith((nodeid + "::", nodeid.rstrip("/") + "/")) for done in run.results)]
    if not missing:
        return
    if vm.timed_out:
        reason = f"the VM run hit its timeout ({vm.seconds:.0f}s; CRISP_VM_TIMEOUT)"
    elif vm.exit_status is None:
        reason = "the VM ended without the job's exit status (kernel panic? QEMU failure?)"
    else:
        reason = f"the guest's pytest exited with status {vm.exit_status} without reporting them"
    errors = "\n".join(run.collect_errors)
    run.error = f"{reason}; {len(missing)} tests have no result.\n{errors}\n{vm.diagnosis()}"


def _lines(path: Path) -> list[dict[str, object]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a VM that died mid-write
    return records


def _results(path: Path) -> dict[str, GuestResult]:
    return {
        str(record["nodeid"]): GuestResult(nodeid=str(record["nodeid"]), outcome=str(record["outcome"]),
                                           text=str(record["text"]), seconds=float(str(record["seconds"])),
                                           summaries=_strings(record.get("summaries")))
        for record in _lines(path) if "outcome" in record
    }


def _strings(value: object) -> tuple[str, ...]:
    return tuple(str(item) for item in value) if isinstance(value, list) else ()


def _collect_errors(path: Path) -> list[str]:
    return [f"collection error in {record['collect_error']}:\n{record['text']}"
            for record in _lines(path) if "collect_error" in record]


def _guest_timings(path: Path) -> dict[str, float]:
    """Guest uptime (seconds since the kernel started) at each step of the job."""
    timings: dict[str, float] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return timings
    for line in lines:
        name, _, value = line.partition(" ")
        try:
            timings.setdefault(f"guest:{name}", float(value))
        except ValueError:
            continue
    return timings
