"""crisp's D-Bus client against the real systemd, both ways in: its private socket (a direct connection: no Hello, no
AddMatch, what a kind node has) and the system bus (dbus-daemon). A transient scope for a running process, its
JobRemoved result, SetUnitProperties, StopUnit and ResetFailedUnit."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from pathlib import Path

import pytest

from runtime import errors
from runtime.systemd import resource_properties, scope_properties
from runtime.systemd.bus import find_endpoint
from runtime.systemd.manager import Systemd


def read(path: str) -> str:
    return Path(path).read_text().strip()


def exists(path: str) -> bool:
    return Path(path).exists()


@pytest.mark.parametrize("bus", ["private", "system"])
def test_transient_scope_lifecycle(bus: str) -> None:
    sleeper = subprocess.Popen(["sleep", "600"])
    unit = f"crisp-dbustest-{secrets.token_hex(4)}.scope"

    async def scenario() -> None:
        systemd = Systemd(bus=bus)
        try:
            assert find_endpoint(bus).direct == (bus == "private")
            props = scope_properties(slice_name="system.slice", pids=[sleeper.pid], description="crisp D-Bus test")
            await systemd.start_transient_unit(unit, props + resource_properties({"memory": {"limit": 64 << 20}}))
            assert await systemd.unit_state(unit) == "active"
            memory_max = f"/sys/fs/cgroup/system.slice/{unit}/memory.max"
            assert await asyncio.to_thread(read, f"/proc/{sleeper.pid}/cgroup") == f"0::/system.slice/{unit}"
            assert await asyncio.to_thread(read, memory_max) == str(64 << 20)
            with pytest.raises(errors.AlreadyExists):
                await systemd.start_transient_unit(unit, props)
            await systemd.set_unit_properties(unit, resource_properties({"memory": {"limit": 96 << 20}}))
            assert await asyncio.to_thread(read, memory_max) == str(96 << 20)
            await systemd.stop_unit(unit)  # returns once the job is done: the process is killed, the cgroup gone
            assert not await asyncio.to_thread(exists, f"/sys/fs/cgroup/system.slice/{unit}")
            await systemd.reset_failed_unit(unit)
            assert await systemd.unit_state(unit) is None
            await systemd.stop_unit(unit)  # not loaded: stopped already
        finally:
            await systemd.close()

    try:
        asyncio.run(scenario())
        assert sleeper.wait(timeout=30) != 0
    finally:
        sleeper.kill()
        sleeper.wait()
