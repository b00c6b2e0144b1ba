"""CRI/OCI resources -> cgroup v2 interface files: pure functions, no kernel needed."""

from __future__ import annotations

import math
from typing import Any

import pytest

from runtime import errors
from runtime.cgroups import MissingLimit, drop_limits, enforceable_limits
from runtime.cgroups.cgroup import all_settings, missing_for
from runtime.cgroups.cpu import cpu_max, shares_to_weight
from runtime.cgroups.io import blkio_weight_to_io_weight
from runtime.cgroups.memory import swap_max


def _files(resources: dict[str, Any]) -> dict[str, str]:
    return {s.file: s.value for s in all_settings(resources)}


@pytest.mark.parametrize(
    ("shares", "weight"),
    [
        (0, 0),  # unset
        (1, 1),  # below the v1 minimum: clamped
        (2, 1),  # the minimum
        (3, 2),
        (10, 4),
        (100, 17),
        (256, 35),
        (512, 59),
        (1024, 100),  # the default
        (2048, 174),
        (4096, 303),
        (102400, 4429),
        (262143, 10000),
        (262144, 10000),  # the maximum
        (10**9, 10000),
    ],
)
def test_shares_to_weight(shares: int, weight: int) -> None:
    assert shares_to_weight(shares) == weight


def test_shares_to_weight_is_monotonic_and_in_range() -> None:
    previous = 0
    for shares in range(2, 262145, 97):
        weight = shares_to_weight(shares)
        assert 1 <= weight <= 10000
        assert weight >= previous
        previous = weight


def test_shares_to_weight_matches_the_published_formula_with_floats_exactly_at_the_anchors() -> None:
    # the anchors are exact: a float error could push ceil() one above them
    for shares, weight in ((2, 1), (1024, 100), (262144, 10000)):
        l2 = math.log2(shares)
        assert 10 ** ((l2 * l2 + 125 * l2) / 612 - 7 / 34) == pytest.approx(weight)
        assert shares_to_weight(shares) == weight


@pytest.mark.parametrize(
    ("quota", "period", "line"),
    [
        (0, 0, None),  # both unset: untouched
        (50000, 100000, "50000 100000"),
        (50000, 0, "50000"),  # period unset: the kernel keeps the current one
        (-1, 0, "max"),
        (-1, 100000, "max 100000"),
        (0, 100000, "max 100000"),
        (1000, 1000, "1000 1000"),
    ],
)
def test_cpu_max(quota: int, period: int, line: str | None) -> None:
    assert cpu_max(quota, period) == line


@pytest.mark.parametrize(
    ("swap", "memory", "v2"),
    [
        (0, 0, 0),  # nothing set
        (0, 1 << 30, 0),  # swap unset: untouched
        (0, -1, -1),  # unlimited memory, swap unset: unlimited swap
        (-1, 1 << 30, -1),  # unlimited swap
        (1 << 30, 1 << 30, 0),  # memory+swap == memory: no swap
        (3 << 30, 1 << 30, 2 << 30),  # 2 GiB of swap
    ],
)
def test_swap_max(swap: int, memory: int, v2: int) -> None:
    assert swap_max(swap, memory) == v2


@pytest.mark.parametrize(("swap", "memory"), [(1 << 30, 0), (1 << 30, -1), (1 << 29, 1 << 30), (1 << 30, -5)])
def test_swap_max_refuses_impossible_combinations(swap: int, memory: int) -> None:
    with pytest.raises(errors.InvalidArgument):
        swap_max(swap, memory)


def test_memory_settings() -> None:
    assert _files({"memory": {"limit": 1 << 30, "swap": 3 << 30, "reservation": 1 << 29}}) == {
        "memory.max": str(1 << 30),
        "memory.low": str(1 << 29),
        "memory.swap.max": str(2 << 30),
    }
    assert _files({"memory": {"limit": 1 << 30, "swap": 1 << 30}}) == {
        "memory.max": str(1 << 30),
        "memory.swap.max": "0",
    }
    assert _files({"memory": {"limit": -1}}) == {"memory.max": "max", "memory.swap.max": "max"}
    assert _files({"memory": {"limit": 0, "swap": 0}}) == {}


def test_zero_means_unset_everywhere() -> None:
    zeros = {
        "cpu": {"shares": 0, "quota": 0, "period": 0, "cpus": "", "mems": ""},
        "memory": {"limit": 0, "reservation": 0, "swap": 0},
        "pids": {"limit": 0},
        "blockIO": {"weight": 0},
        "unified": {},
        "devices": [{"allow": False, "access": "rwm"}],  # not a controller setting
    }
    assert all_settings(zeros) == []


def test_cpu_and_cpuset_settings() -> None:
    assert _files({"cpu": {"shares": 1024, "quota": 20000, "period": 100000, "cpus": "0-1,3", "mems": "0"}}) == {
        "cpu.weight": "100",
        "cpu.max": "20000 100000",
        "cpuset.cpus": "0-1,3",
        "cpuset.mems": "0",
    }
    assert _files({"cpu": {"burst": 1000, "idle": 1}}) == {"cpu.max.burst": "1000", "cpu.idle": "1"}


def test_pids_settings() -> None:
    assert _files({"pids": {"limit": 100}}) == {"pids.max": "100"}
    assert _files({"pids": {"limit": -1}}) == {"pids.max": "max"}


def test_hugetlb_settings() -> None:
    settings = all_settings({"hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}, {"pageSize": "1GB"}]})
    assert [(s.file, s.value, s.optional, s.tolerated) for s in settings] == [
        ("hugetlb.2MB.max", str(4 << 20), False, False),
        ("hugetlb.2MB.rsvd.max", str(4 << 20), True, False),
        ("hugetlb.1GB.max", "0", True, True),
        ("hugetlb.1GB.rsvd.max", "0", True, True),
    ]


def test_io_settings() -> None:
    settings = all_settings({
        "blockIO": {
            "weight": 500,
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
            "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 100}],
        }
    })
    assert [(s.file, s.value, s.fallback) for s in settings] == [
        ("io.bfq.weight", "500", ("io.weight", str(blkio_weight_to_io_weight(500)))),
        ("io.max", "8:0 rbps=1048576", None),
        ("io.max", "8:16 wiops=100", None),
    ]
    assert blkio_weight_to_io_weight(10) == 1
    assert blkio_weight_to_io_weight(1000) == 10000


def test_rdma_and_unified_settings() -> None:
    assert _files({"rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000}}}) == {
        "rdma.max": "mlx5_1 hca_handle=3 hca_object=10000"
    }
    settings = all_settings({"unified": {"memory.high": "1000000", "cgroup.max.depth": "3"}})
    assert [(s.controller, s.file, s.value) for s in settings] == [
        ("memory", "memory.high", "1000000"),
        (None, "cgroup.max.depth", "3"),
    ]


@pytest.mark.parametrize(
    "resources",
    [
        {"cpu": {"shares": "1024"}},
        {"cpu": {"shares": -2}},
        {"cpu": {"cpus": "0-"}},
        {"cpu": {"period": -1, "quota": 1}},
        {"memory": {"limit": -7}},
        {"pids": {"limit": True}},
        {"hugepageLimits": [{"pageSize": "2M", "limit": 1}]},
        {"hugepageLimits": [{"pageSize": "2MB", "limit": -1}]},
        {"blockIO": {"weight": 5}},
        {"unified": {"cgroup.procs": "1"}},
        {"unified": {"memory.high": 5}},
        {"unified": {"../../etc/passwd": "x"}},
        {"memory": "lots"},
    ],
)
def test_bad_values_are_invalid_argument(resources: dict[str, Any]) -> None:
    with pytest.raises(errors.InvalidArgument):
        all_settings(resources)


def test_missing_for_reports_each_requested_key_once() -> None:
    resources = {
        "cpu": {"shares": 512, "quota": 1000, "period": 10000, "cpus": "0"},
        "memory": {"limit": 1 << 20, "swap": 1 << 20},
        "pids": {"limit": 10},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 0}, {"pageSize": "1GB", "limit": 1 << 30}],
        "unified": {"memory.high": "1", "cgroup.max.depth": "2"},
    }
    assert missing_for(resources, frozenset()) == [
        MissingLimit("cpu.cpus", "cpuset"),
        MissingLimit("cpu.shares", "cpu"),
        MissingLimit("cpu.quota", "cpu"),
        MissingLimit("cpu.period", "cpu"),
        MissingLimit("memory.limit", "memory"),
        MissingLimit("memory.swap", "memory"),
        MissingLimit("pids.limit", "pids"),
        MissingLimit("hugepageLimits.1GB", "hugetlb"),  # the 0 limit for 2MB is tolerated
        MissingLimit("unified.memory.high", "memory"),
    ]
    assert missing_for(resources, frozenset({"cpu", "cpuset", "memory", "pids", "hugetlb"})) == []
    assert missing_for(resources, frozenset({"cpu", "cpuset", "pids", "hugetlb"})) == [
        MissingLimit("memory.limit", "memory"),
        MissingLimit("memory.swap", "memory"),
        MissingLimit("unified.memory.high", "memory"),
    ]


def test_v1_only_knobs_are_reported_missing() -> None:
    resources = {
        "cpu": {"realtimeRuntime": 1000},
        "memory": {"swappiness": 60, "kernel": 1 << 20, "disableOOMKiller": False},
        "network": {"classID": 7},
    }
    assert [m.key for m in missing_for(resources, frozenset({"cpu", "memory"}))] == [
        "cpu.realtimeRuntime", "memory.kernel", "memory.swappiness", "network.classID",
    ]


def test_drop_limits_removes_exactly_the_missing_keys() -> None:
    resources = {
        "cpu": {"shares": 512, "cpus": "0"},
        "memory": {"limit": 1 << 20, "swap": 2 << 20},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 0}, {"pageSize": "1GB", "limit": 1 << 30}],
        "unified": {"memory.high": "1", "cgroup.max.depth": "2"},
        "devices": [{"allow": False, "access": "rwm"}],
    }
    missing = missing_for(resources, frozenset({"cpuset"}))
    dropped = drop_limits(resources, missing)
    assert dropped == {
        "cpu": {"cpus": "0"},
        "memory": {},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
        "unified": {"cgroup.max.depth": "2"},
        "devices": [{"allow": False, "access": "rwm"}],
    }
    assert missing_for(dropped, frozenset({"cpuset"})) == []
    assert resources["memory"] == {"limit": 1 << 20, "swap": 2 << 20}  # the input is not changed


def test_missing_controller_policy(caplog: pytest.LogCaptureFixture) -> None:
    """The one home of `[cgroup] missing_controller`, for CreateContainer and UpdateContainerResources alike."""
    resources = {"memory": {"limit": 1 << 20}, "pids": {"limit": 10}}
    missing = [MissingLimit("memory.limit", "memory")]
    assert enforceable_limits(resources, [], "error", "container c1") == resources
    with pytest.raises(errors.FailedPrecondition, match=r"container c1: .*memory.limit \(needs memory\)"):
        enforceable_limits(resources, missing, "error", "container c1")
    kept = enforceable_limits(resources, missing, "warn", "container c1")
    assert kept == {"memory": {}, "pids": {"limit": 10}}
    assert "container c1: dropping limits this node cannot enforce: memory.limit" in caplog.text
    assert resources == {"memory": {"limit": 1 << 20}, "pids": {"limit": 10}}  # the caller's dict is unchanged
