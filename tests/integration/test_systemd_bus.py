"""runtime.systemd.bus against a real dbus-daemon (a private one per test): authentication, Hello, calls, D-Bus
errors, signals through AddMatch, and a connection that ends. systemd itself answers in the VM tier's systemd
guest (tests/vm/guest_systemd)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from jeepney import DBusAddress, MatchRule, new_method_call

from runtime import errors
from runtime.systemd.bus import BusError, Connection, Endpoint, find_endpoint

DBUS = DBusAddress("/org/freedesktop/DBus", bus_name="org.freedesktop.DBus", interface="org.freedesktop.DBus")
NAME_OWNER_CHANGED = MatchRule(type="signal", interface="org.freedesktop.DBus", member="NameOwnerChanged")

pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None,
                                reason="dbus-daemon is missing (`make debs-test` installs it)")


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Endpoint]]:
    socket_path = tmp_path / "bus"
    daemon = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--nopidfile", "--nosyslog",
                               f"--address=unix:path={socket_path}", "--print-address"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert daemon.stdout is not None
        assert daemon.stdout.readline().startswith(b"unix:path=")  # it prints the address once it listens
        yield daemon, Endpoint(str(socket_path), direct=False)
    finally:
        daemon.kill()
        daemon.wait()


def test_call_error_and_signal(bus: tuple[subprocess.Popen[bytes], Endpoint]) -> None:
    _daemon, endpoint = bus

    async def scenario() -> None:
        conn = await Connection.open(endpoint, 10)
        try:
            (bus_id,) = await conn.call(new_method_call(DBUS, "GetId"), 10)
            assert len(bus_id) == 32
            with pytest.raises(BusError) as raised:
                await conn.call(new_method_call(DBUS, "NoSuchMethod"), 10)
            assert raised.value.name == "org.freedesktop.DBus.Error.UnknownMethod"
            await conn.subscribe(NAME_OWNER_CHANGED, 10)
            with conn.signals(NAME_OWNER_CHANGED) as queue:
                other = await Connection.open(endpoint, 10)
                joined = other._conn.unique_name
                assert joined.startswith(":") and joined != conn._conn.unique_name
                await other.close()
                owners_changed = set()
                async with asyncio.timeout(10):
                    while joined not in owners_changed:  # it appeared, then went: both are NameOwnerChanged
                        signal = await conn.next_signal(queue, "NameOwnerChanged")
                        owners_changed.add(signal.body[0])
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_a_connection_that_ends_says_so(bus: tuple[subprocess.Popen[bytes], Endpoint]) -> None:
    daemon, endpoint = bus

    async def scenario() -> None:
        conn = await Connection.open(endpoint, 10)
        try:
            await conn.subscribe(NAME_OWNER_CHANGED, 10)
            with conn.signals(MatchRule(type="signal", member="NeverSent")) as queue:
                waiter = asyncio.ensure_future(conn.next_signal(queue, "a signal nobody sends"))
                await asyncio.sleep(0.1)
                daemon.kill()
                with pytest.raises(errors.Unavailable, match="ended while waiting for a signal nobody sends"):
                    await asyncio.wait_for(waiter, 10)
            assert conn.closed
            with pytest.raises(errors.Unavailable):
                await conn.call(new_method_call(DBUS, "GetId"), 10)
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_nobody_listening(tmp_path: Path) -> None:
    async def scenario() -> None:
        with pytest.raises(errors.Unavailable, match="cannot connect"):
            await Connection.open(Endpoint(str(tmp_path / "none"), direct=False), 5)

    asyncio.run(scenario())


def test_endpoint_choice(tmp_path: Path) -> None:
    assert find_endpoint("private") == Endpoint("/run/systemd/private", direct=True)
    assert find_endpoint("system", env={"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/sock"}) == Endpoint(
        f"{tmp_path}/sock", direct=False)
    assert find_endpoint("system", env={}).path == "/run/dbus/system_bus_socket"
    with pytest.raises(errors.InvalidArgument):
        find_endpoint("session")
