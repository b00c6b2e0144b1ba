"""pytest plugin of the VM tier (loaded by tests/conftest.py), with two faces.

On the host, every test marked `vm` (and every test under tests/vm/guest/, which is marked automatically) is
replaced by a proxy item with the same node id. A test marked `vm_also` (and every test under ALSO_IN_VM) runs on
the host as usual and gets a proxy `<name>@vm` besides. The first proxy that runs boots the VM once for all selected
proxies; each proxy then reports its guest test's result (pass, failure with the guest's traceback and captured
output, skip with its reason). `pytest -m vm` (`make test-vm`) runs only the tier; `pytest -m "not vm"` skips it.

In the guest (CRISP_VM_GUEST=1, set by guest-job.sh) the tests run for real; this plugin writes each test's
result to CRISP_VM_RESULTS as one JSON line, and bounds each test phase by CRISP_VM_TEST_TIMEOUT seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Generator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from tests.vm.settings import VmSettings

GUEST_DIR = Path(__file__).parent / "guest"
# tests that run in the guest booted with systemd as PID 1 (one boot of its own, only when one of them is selected)
SYSTEMD_GUEST_DIR = Path(__file__).parent / "guest_systemd"
# host tests that also run in the VM: there every controller exists, cgroup v2 is the only hierarchy (so specs get
# a cgroup namespace), and the kernel is Debian's 6.1 rather than the host's
ALSO_IN_VM = tuple(Path(__file__).parents[1] / sub for sub in (
    "integration/cgroups",
    "integration/test_oci_runc.py",
    "executor/test_container.py",
))
# marks that the guest evaluates: copying them onto a host proxy would evaluate them against the host
GUEST_ONLY_MARKS = frozenset({"skip", "skipif", "xfail", "usefixtures", "parametrize", "filterwarnings"})
TIER_KEY = pytest.StashKey["VmTier"]()


def in_guest() -> bool:
    return os.environ.get("CRISP_VM_GUEST") == "1"


def pytest_configure(config: pytest.Config) -> None:
    if in_guest():
        config.pluginmanager.register(GuestReporter(Path(os.environ["CRISP_VM_RESULTS"])), "crisp-vm-guest")
    else:
        config.stash[TIER_KEY] = VmTier(config)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselection, so that it sees the automatic `vm` mark
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(GUEST_DIR) or item.path.is_relative_to(SYSTEMD_GUEST_DIR):
            item.add_marker(pytest.mark.vm)
        elif any(item.path.is_relative_to(also) for also in ALSO_IN_VM):
            item.add_marker(pytest.mark.vm_also)
    if in_guest():
        return
    also: list[pytest.Item] = [GuestTest.proxy_for(item, suffix="@vm") for item in items
                                if item.get_closest_marker("vm_also") and not item.get_closest_marker("vm")]
    items[:] = [GuestTest.proxy_for(item) if item.get_closest_marker("vm") else item for item in items] + also


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    tier = config.stash.get(TIER_KEY, None)
    for run in tier.runs.values() if tier is not None else []:
        terminalreporter.write_line(f"crisp-vm: {run.summary()}")


# ------------------------------------------------------------------------------------------------------- host side


class GuestFailure(Exception):
    """A guest test failed; the message is its report from the guest."""


class VmTier:
    """The session's VM runs, one per guest kind (plain, systemd), each started by the first of its proxies that
    runs, for every selected proxy of that kind."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.runs: dict[str, Any] = {}  # guest -> tests.vm.tier.TierRun once started
        self.failures: dict[str, str] = {}
        self.diagnosed = False

    def result(self, item: GuestTest) -> Any:
        """The guest's result for `item`; GuestFailure when the VM did not produce one."""
        guest = item.guest
        if guest not in self.runs and guest not in self.failures:
            self._start(item.session, guest)
        if guest in self.failures:
            raise GuestFailure(self._once(self.failures[guest]))
        run = self.runs[guest]
        found = run.results.get(item.guest_nodeid)
        if found is None:
            reason = run.error or "the guest's pytest did not report it"
            raise GuestFailure(f"no result from the {guest} guest for {item.guest_nodeid}: {self._once(reason)}")
        return found

    def _once(self, text: str) -> str:
        """The full diagnosis (VM output) with the first failure only; the others point to it."""
        if self.diagnosed:
            return text.split("\n", 1)[0] + " (the VM's output is shown with the first failure of the tier)"
        self.diagnosed = True
        return text

    def _start(self, session: pytest.Session, guest: str) -> None:
        from tests.vm.tier import run_guest_tests  # imported when used: collecting never touches the system

        nodeids = list(dict.fromkeys(item.guest_nodeid for item in session.items
                                     if isinstance(item, GuestTest) and item.guest == guest))
        try:
            self.runs[guest] = run_guest_tests(nodeids, VmSettings.from_env(), guest=guest)
        except Exception as error:  # image build, wheels, QEMU: every proxy fails with the same reason
            self.failures[guest] = f"the VM tier ({guest} guest) could not run: {type(error).__name__}: {error}"


class GuestTest(pytest.Item):
    """Stands in on the host for a test that runs in the VM."""

    guest_nodeid: str  # the test the guest runs (the proxy's own node id, but for the `@vm` of a `vm_also` test)
    guest: str = "plain"  # the guest it runs in: "systemd" for tests under tests/vm/guest_systemd
    line: int | None = None  # where the test is defined (0-based, as pytest reports it)

    @classmethod
    def proxy_for(cls, item: pytest.Item, suffix: str = "") -> GuestTest:
        assert item.parent is not None
        proxy: GuestTest = cls.from_parent(item.parent, name=item.name + suffix)
        proxy.guest_nodeid = item.nodeid
        proxy.guest = "systemd" if item.path.is_relative_to(SYSTEMD_GUEST_DIR) else "plain"
        proxy.line = item.reportinfo()[1]
        # marks of the module and class are inherited through the shared parent; copy the test's own
        for mark in item.own_markers:
            if mark.name not in GUEST_ONLY_MARKS:
                proxy.own_markers.append(mark)
        for keyword in item.keywords:  # for -k: parametrize ids, marks, names
            proxy.keywords.setdefault(keyword, item.keywords[keyword])
        if suffix:
            proxy.add_marker(pytest.mark.vm)
        return proxy

    def runtest(self) -> None:
        if os.geteuid() != 0:
            pytest.skip("the VM tier needs root (building the image with mmdebstrap, 9p passthrough)")
        result = self.config.stash[TIER_KEY].result(self)
        # the guest test's record_property("summary", ...) lines, printed at the end of the host's run
        self.user_properties.extend(("summary", line) for line in result.summaries)
        if result.outcome in ("passed", "xfailed"):
            return
        if result.outcome == "skipped":
            reason = result.text.removeprefix("Skipped: ")
            raise pytest.skip.Exception(f"in the VM: {reason}", _use_item_location=True)
        raise GuestFailure(f"{result.outcome} in the VM ({result.seconds:.1f}s):\n{result.text}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, GuestFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo, style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, self.line or 0, f"{self.name} (in the VM)"


# ------------------------------------------------------------------------------------------------------ guest side


class GuestTestTimeout(Exception):
    """A guest test phase ran longer than CRISP_VM_TEST_TIMEOUT."""


class GuestReporter:
    """Writes one JSON line per finished test, as soon as it finishes (so a VM that dies keeps what ran)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.timeout = VmSettings.from_env().test_timeout
        self.phases: dict[str, list[pytest.TestReport]] = {}
        self.first_test_seen = False
        self.started = 0.0  # wall clock at the current test's start (the journal's --since)

    def _write(self, record: dict[str, object]) -> None:
        with open(self.path, "a") as out:
            out.write(json.dumps(record) + "\n")

    def _stamp(self, name: str) -> None:
        timings = os.environ.get("CRISP_VM_TIMINGS")
        if timings:
            uptime = Path("/proc/uptime").read_text().split()[0]
            with open(timings, "a") as out:
                out.write(f"{name} {uptime}\n")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        if not self.first_test_seen:
            self.first_test_seen = True
            self._stamp("first-test")
        self.started = time.time()
        return (yield)

    def _alarm(self, phase: str, item: pytest.Item) -> None:
        def expire(signum: int, frame: FrameType | None) -> None:
            raise GuestTestTimeout(f"{item.nodeid}: {phase} ran longer than {self.timeout:.0f}s "
                                   "(CRISP_VM_TEST_TIMEOUT)")

        signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, object, object]:
        self._alarm("setup", item)
        try:
            return (yield)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        self._alarm("call", item)
        try:
            return (yield)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, object, object]:
        self._alarm("teardown", item)
        try:
            return (yield)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self._write({"collect_error": report.nodeid, "text": report.longreprtext})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.phases.setdefault(report.nodeid, []).append(report)
        if report.when == "teardown":
            record = _combine(report.nodeid, self.phases.pop(report.nodeid))
            if record["outcome"] == "failed":
                record["text"] = f"{record['text']}{_journal_since(self.started)}"
            self._write(record)


def _journal_since(started: float) -> str:
    """In the systemd guest, the journal of a failed test's time (PID 1's and D-Bus's side of a stall, crisp's units):
    the VM's disk goes with the run, so this is the only copy."""
    if not Path("/run/systemd/system").is_dir():
        return ""
    try:
        out = subprocess.run(["journalctl", "--no-pager", "-o", "short-monotonic", f"--since=@{started - 1:.0f}"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return f"\n--- guest journal ---\n(journalctl: {error})"
    lines = out.splitlines()
    return "\n--- guest journal (last 300 lines) ---\n" + "\n".join(lines[-300:])


def _combine(nodeid: str, reports: list[pytest.TestReport]) -> dict[str, object]:
    summaries = [str(value) for report in reports for key, value in report.user_properties if key == "summary"]
    return {**_outcome(nodeid, reports), "summaries": summaries}


def _outcome(nodeid: str, reports: list[pytest.TestReport]) -> dict[str, object]:
    seconds = sum(report.duration for report in reports)
    failed = [report for report in reports if report.failed]
    if failed:
        texts = []
        for report in failed:
            texts.append(f"--- {report.when} ---\n{report.longreprtext}")
            texts.extend(f"--- {title} ---\n{content}" for title, content in report.sections)
        outcome = "xpassed" if any(hasattr(report, "wasxfail") for report in failed) else "failed"
        return {"nodeid": nodeid, "outcome": outcome, "text": "\n".join(texts), "seconds": seconds}
    skipped = [report for report in reports if report.skipped]
    if skipped:
        report = skipped[0]
        if hasattr(report, "wasxfail"):
            return {"nodeid": nodeid, "outcome": "xfailed", "text": str(report.wasxfail), "seconds": seconds}
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        return {"nodeid": nodeid, "outcome": "skipped", "text": reason, "seconds": seconds}
    return {"nodeid": nodeid, "outcome": "passed", "text": "", "seconds": seconds}

