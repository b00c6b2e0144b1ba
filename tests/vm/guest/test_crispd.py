"""crispd as installed in the guest (the venv's console script) starts under the pure cgroup v2 kernel and
answers over its socket: the tier can host daemon-level tests. Slow callbacks are not checked here: under TCG
every instruction is emulated, so the 50 ms threshold of tests/cri says nothing about crisp."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from cri import api as cri
from runtime.version import VERSION
from tests.cri.crispd import Crispd, crispd_command


def test_crispd_runs_from_the_guest_venv_and_answers(tmp_path: Path) -> None:
    assert crispd_command() == [str(Path(sys.executable).parent / "crispd")]
    assert Path(sys.executable).parent == Path("/opt/crisp-tests/bin")
    daemon = Crispd(tmp_path).start(timeout=120)
    try:
        version = daemon.runtime.Version(cri.VersionRequest(version="v1"), timeout=30)
        status = daemon.runtime.Status(cri.StatusRequest(), timeout=30)
    finally:
        code = daemon.stop(signal.SIGTERM, timeout=60)
    assert code == 0, daemon.log()
    assert (version.runtime_name, version.runtime_version) == ("crisp", VERSION)
    assert {c.type: c.status for c in status.status.conditions}["RuntimeReady"] is True
