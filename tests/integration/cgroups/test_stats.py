"""Stats from this host's real interface files: what exists is read, what does not is None."""

from __future__ import annotations

import pytest

from runtime import errors
from tests.integration.cgroups.conftest import Sandbox

pytestmark = pytest.mark.root


def test_stats_of_a_busy_cgroup(cgroups: Sandbox) -> None:
    cg = cgroups.manager.create(cgroups.path("crisp-stats"))
    before = cg.stats()
    assert before.cpu is not None and before.cpu.usage_usec == 0
    busy = cgroups.python("import time\nend = time.process_time() + 0.2\nwhile time.process_time() < end: pass\n")
    cg.add_process(busy.pid)
    assert busy.stdin is not None
    busy.stdin.write("go\n")
    busy.stdin.flush()
    assert busy.wait(timeout=60) == 0
    after = cg.stats()
    assert after.cpu is not None and after.cpu.usage_usec is not None and after.cpu.user_usec is not None
    assert after.cpu.usage_usec >= 200_000  # the child burnt 0.2 s of CPU in here
    assert after.cpu.usage_usec == after.cpu.raw["usage_usec"]
    available = cg.controllers()
    assert (after.cpu.nr_periods is None) == ("cpu" not in available)
    assert (after.memory is None) == ("memory" not in available)
    assert (after.pids is None) == ("pids" not in available)
    assert (after.io is None) == ("io" not in available)
    psi = (cg.dir / "cpu.pressure").exists()
    assert (after.cpu_pressure is not None) == psi
    if psi:
        assert after.cpu_pressure is not None and after.cpu_pressure.some is not None
        assert after.cpu_pressure.some.total >= 0


def test_stats_of_a_missing_cgroup_is_not_found(cgroups: Sandbox) -> None:
    with pytest.raises(errors.NotFound):
        cgroups.manager.cgroup(cgroups.path("crisp-gone")).stats()


def test_frozen_state_is_visible(cgroups: Sandbox) -> None:
    cg = cgroups.manager.create(cgroups.path("crisp-fz"))
    cg.freeze()
    assert cg.events() == {"populated": 0, "frozen": 1}
    cg.thaw()
    assert cg.events()["frozen"] == 0
