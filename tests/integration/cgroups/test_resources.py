"""Limits on this host's cgroups: the missing-controller error path is real here (no cpu, memory, pids or io
controller on this hybrid host); where a controller exists (the VM tier, or hugetlb here when the root enables
it), values are written and read back."""

from __future__ import annotations

import pytest

from runtime import errors
from runtime.cgroups import MissingLimit, drop_limits
from tests.integration.cgroups.conftest import Sandbox

pytestmark = pytest.mark.root

REQUEST = {
    "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
    "memory": {"limit": 256 << 20, "swap": 256 << 20},
    "pids": {"limit": 100},
    "unified": {"memory.high": str(200 << 20), "cgroup.max.depth": "3"},
}
EXPECTED = {  # OCI key -> (controller, file, value read back)
    "cpu.shares": ("cpu", "cpu.weight", "59"),
    "cpu.quota": ("cpu", "cpu.max", "50000 100000"),
    "cpu.period": ("cpu", "cpu.max", "50000 100000"),
    "cpu.cpus": ("cpuset", "cpuset.cpus", "0"),
    "cpu.mems": ("cpuset", "cpuset.mems", "0"),
    "memory.limit": ("memory", "memory.max", str(256 << 20)),  # and memory.swap.max "0": swap == limit is no swap
    "pids.limit": ("pids", "pids.max", "100"),
    "unified.memory.high": ("memory", "memory.high", str(200 << 20)),
}


def test_missing_controllers_are_reported_before_and_after_creation(cgroups: Sandbox) -> None:
    path = cgroups.path("crisp-pod", "crisp-c")
    before = cgroups.manager.missing_controllers(REQUEST, path)
    cg = cgroups.manager.create(path)
    available = cg.controllers()
    expected = [MissingLimit(key, ctl) for key, (ctl, _, _) in EXPECTED.items() if ctl not in available]
    assert sorted(before, key=str) == sorted(expected, key=str)
    assert sorted(cg.missing_controllers(REQUEST), key=str) == sorted(expected, key=str)
    assert sorted(cgroups.manager.missing_controllers(REQUEST, path), key=str) == sorted(expected, key=str)


def test_apply_requires_every_limit_and_writes_nothing_when_one_is_missing(cgroups: Sandbox) -> None:
    cg = cgroups.manager.create(cgroups.path("crisp-strict"))
    missing = cg.missing_controllers(REQUEST)
    if not missing:
        pytest.skip("every controller is available here")
    with pytest.raises(errors.FailedPrecondition) as exc:
        cg.apply(REQUEST)
    assert missing[0].key in str(exc.value)
    assert (cg.dir / "cgroup.max.depth").read_text().strip() == "max"  # not even the core file was written


def test_apply_after_dropping_the_missing_limits(cgroups: Sandbox) -> None:
    """crispd's "warn" policy: drop what cannot be enforced, apply the rest."""
    cg = cgroups.manager.create(cgroups.path("crisp-warn"))
    dropped = drop_limits(REQUEST, cg.missing_controllers(REQUEST))
    assert cg.missing_controllers(dropped) == []
    cg.apply(dropped)
    assert (cg.dir / "cgroup.max.depth").read_text().strip() == "3"
    available = cg.controllers()
    for _key, (ctl, file, value) in EXPECTED.items():
        if ctl in available and file != "memory.swap.max":
            assert (cg.dir / file).read_text().strip() == value


def test_live_update_of_unified_core_files(cgroups: Sandbox) -> None:
    cg = cgroups.manager.create(cgroups.path("crisp-live"))
    cg.apply({"unified": {"cgroup.max.depth": "4", "cgroup.max.descendants": "10"}})
    assert (cg.dir / "cgroup.max.depth").read_text().strip() == "4"
    cg.apply({"unified": {"cgroup.max.depth": "max"}})
    assert (cg.dir / "cgroup.max.depth").read_text().strip() == "max"
    assert (cg.dir / "cgroup.max.descendants").read_text().strip() == "10"  # untouched by the update


def test_a_failed_write_puts_back_what_was_written(cgroups: Sandbox) -> None:
    cg = cgroups.manager.create(cgroups.path("crisp-undo"))
    with pytest.raises(errors.InvalidArgument):
        cg.apply({"unified": {"cgroup.max.depth": "5", "cgroup.max.descendants": "lots"}})
    assert (cg.dir / "cgroup.max.depth").read_text().strip() == "max"
    assert (cg.dir / "cgroup.max.descendants").read_text().strip() == "max"


@pytest.mark.parametrize("key", ["cgroup.procs", "cgroup.subtree_control", "../x.max", "memory.max/x"])
def test_unified_keys_crisp_manages_are_refused(cgroups: Sandbox, key: str) -> None:
    cg = cgroups.manager.create(cgroups.path("crisp-refuse"))
    with pytest.raises(errors.InvalidArgument):
        cg.apply({"unified": {key: "1"}})


def test_hugetlb_limits(cgroups: Sandbox) -> None:
    cg = cgroups.manager.create(cgroups.path("crisp-huge"))
    zero = {"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]}
    some = {"hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}]}
    assert cg.missing_controllers(zero) == []  # a 0 limit is tolerated either way
    if "hugetlb" not in cg.controllers() or not (cg.dir / "hugetlb.2MB.max").exists():
        cg.apply(zero)
        assert cg.missing_controllers(some) == [MissingLimit("hugepageLimits.2MB", "hugetlb")]
        with pytest.raises(errors.FailedPrecondition):
            cg.apply(some)
        return
    cg.apply(some)
    assert (cg.dir / "hugetlb.2MB.max").read_text().strip() == str(4 << 20)
    if (cg.dir / "hugetlb.2MB.rsvd.max").exists():
        assert (cg.dir / "hugetlb.2MB.rsvd.max").read_text().strip() == str(4 << 20)
    cg.apply(zero)
    assert (cg.dir / "hugetlb.2MB.max").read_text().strip() == "0"
