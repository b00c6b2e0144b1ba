"""runtime.systemd without systemd: the unit properties of OCI resources (the mapping the cgroupfs driver shares)
and sd_notify's datagrams (to a socket the test binds)."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from runtime import errors
from runtime.systemd import notify, resource_properties, scope_properties
from runtime.systemd.properties import UNLIMITED, cpu_mask

MIB = 1024 * 1024


def props(resources: dict[str, object]) -> dict[str, object]:
    return {name: value for name, (_sig, value) in resource_properties(resources)}


def test_kubelet_container_resources() -> None:
    # what the kubelet sends for requests cpu=250m memory=64Mi, limits cpu=500m memory=128Mi, pids 1024
    got = props({"cpu": {"shares": 256, "quota": 50000, "period": 100000},
                 "memory": {"limit": 128 * MIB, "swap": 128 * MIB}, "pids": {"limit": 1024}})
    assert got["CPUQuotaPerSecUSec"] == 500_000  # 0.5 CPU = 500 ms per second
    assert got["CPUQuotaPeriodUSec"] == 100_000
    assert got["MemoryMax"] == 128 * MIB
    assert got["MemorySwapMax"] == 0  # swap == memory: no swap at all
    assert got["TasksMax"] == 1024
    assert 1 <= int(got["CPUWeight"]) < 100  # 256 shares weigh less than the default 1024 (= weight 100)


def test_signatures_are_dbus_types() -> None:
    signatures = {name: sig for name, (sig, _v) in resource_properties(
        {"cpu": {"shares": 1024, "cpus": "0-1"}, "memory": {"limit": MIB}})}
    assert signatures == {"CPUWeight": "t", "AllowedCPUs": "ay", "MemoryMax": "t"}


def test_unlimited_values() -> None:
    got = props({"cpu": {"quota": -1, "period": 100000}, "memory": {"limit": -1}, "pids": {"limit": -1}})
    assert got["CPUQuotaPerSecUSec"] == UNLIMITED
    assert got["MemoryMax"] == UNLIMITED
    assert got["TasksMax"] == UNLIMITED


def test_cpu_quota_is_rounded_up_to_ten_ms_per_second() -> None:
    # systemd keeps the quota as a percentage; the exact value goes to cpu.max as a file
    assert props({"cpu": {"quota": 12345, "period": 100000}})["CPUQuotaPerSecUSec"] == 130_000
    # a quota without a period is taken against the kernel's default period of 100 ms
    got = props({"cpu": {"quota": 20000}})
    assert got["CPUQuotaPerSecUSec"] == 200_000 and "CPUQuotaPeriodUSec" not in got


def test_cpu_and_memory_node_masks() -> None:
    assert cpu_mask("0-2,9") == bytes([0b0000_0111, 0b0000_0010])
    assert props({"cpu": {"mems": "0"}})["AllowedMemoryNodes"] == b"\x01"
    with pytest.raises(errors.InvalidArgument):
        cpu_mask("3-1")


def test_reservation_swap_and_io_weight() -> None:
    got = props({"memory": {"limit": 100 * MIB, "swap": 300 * MIB, "reservation": 50 * MIB},
                 "blockIO": {"weight": 500}})
    assert got["MemoryLow"] == 50 * MIB
    assert got["MemorySwapMax"] == 200 * MIB  # v2 limits swap alone: memory+swap minus memory
    assert got["IOWeight"] == 4950  # blkio 500 on io.weight's scale


def test_unified_keys_map_by_file_and_the_rest_stays_files() -> None:
    got = props({"unified": {"memory.high": "1073741824", "memory.oom.group": "1", "cpu.weight": "42"},
                 "hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MIB}],
                 "blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1000}]}})
    assert got == {"MemoryHigh": 1 << 30, "CPUWeight": 42}
    with pytest.raises(errors.InvalidArgument):
        resource_properties({"unified": {"memory.max": "lots"}})


def test_scope_properties() -> None:
    got = {name: value for name, (_sig, value) in scope_properties(
        slice_name="crisp.slice", pids=[42], description="crisp container abc")}
    assert got["PIDs"] == [42] and got["Slice"] == "crisp.slice" and got["Delegate"] is True
    assert got["MemoryAccounting"] is True and got["DefaultDependencies"] is False
    with pytest.raises(errors.InvalidArgument):
        scope_properties(slice_name="crisp.slice", pids=[], description="empty")


def test_notify_to_a_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        assert notify("READY=1\nSTATUS=serving", env={"NOTIFY_SOCKET": path})
        assert server.recv(4096) == b"READY=1\nSTATUS=serving"


def test_notify_to_an_abstract_socket() -> None:
    name = f"crisp-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(5)
        assert notify("STOPPING=1", env={"NOTIFY_SOCKET": "@" + name})
        assert server.recv(4096) == b"STOPPING=1"


def test_notify_without_a_socket(tmp_path: Path) -> None:
    assert not notify("READY=1", env={})
    assert not notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
