"""crispd's systemd client (runtime/systemd/manager.py) against a stand-in for systemd's private socket that leaves
its first connections unanswered after their authentication: the client gives such a connection up for a new one
within its timeout. (systemd itself answers in the VM tier's systemd guest, tests/vm/guest_systemd.)"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from jeepney import HeaderFields, MessageType, new_error, new_method_return
from jeepney.low_level import Parser

from runtime import errors
from runtime.systemd.bus import Connection, Endpoint, manager_call
from runtime.systemd.manager import NO_SUCH_UNIT, Systemd


class Peer:
    """A direct D-Bus peer (no bus daemon, as systemd's private socket): SASL EXTERNAL, then method calls. The
    first `silent` connections get no answer to any call, the `hang_up` after them are closed at their first call;
    later ones get an empty return to Subscribe and NoSuchUnit to GetUnit."""

    def __init__(self, silent: int = 0, hang_up: int = 0) -> None:
        self.silent = silent
        self.hang_up = hang_up
        self.connections = 0
        self.calls: list[tuple[int, str]] = []  # (connection number, member)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            assert (await reader.readexactly(1)) == b"\0"
            assert (await reader.readline()).startswith(b"AUTH EXTERNAL ")
            writer.write(b"OK 0123456789abcdef0123456789abcdef\r\n")
            assert await reader.readline() == b"BEGIN\r\n"
            parser = Parser()
            serials = itertools.count(1)
            while data := await reader.read(65536):
                parser.add_data(data)
                while (message := parser.get_next_message()) is not None:
                    if message.header.message_type != MessageType.method_call:
                        continue
                    member = str(message.header.fields[HeaderFields.member])
                    self.calls.append((number, member))
                    if number <= self.silent:
                        continue
                    if number <= self.silent + self.hang_up:
                        return
                    reply = new_error(message, NO_SUCH_UNIT, "s", ("not loaded",)) if member == "GetUnit" \
                        else new_method_return(message)
                    writer.write(reply.serialise(serial=next(serials)))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(peer: Peer, tmp_path: Path) -> AsyncIterator[Systemd]:
    """The peer listening as a private socket, and a client of it with a 1.5 s timeout; both closed at the end."""
    server = await asyncio.start_unix_server(peer.serve, str(tmp_path / "private"))
    systemd = Systemd(timeout=1.5, endpoint=Endpoint(str(tmp_path / "private"), direct=True))
    try:
        yield systemd
    finally:
        await systemd.close()
        server.close()
        await server.wait_closed()


def test_an_unanswered_connection_is_given_up_for_a_new_one(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        peer = Peer(silent=1)
        async with serving(peer, tmp_path) as systemd:
            with caplog.at_level(logging.WARNING, logger="runtime.systemd.manager"):
                assert await systemd.unit_state("crisp-x.scope") is None
            # the first connection asked to Subscribe and heard nothing; the second was answered and kept
            assert peer.calls == [(1, "Subscribe"), (2, "Subscribe"), (2, "GetUnit")]
            assert "no reply to Subscribe within 0.5s; trying a new connection (2 of 3)" in caplog.text
            assert await systemd.unit_state("crisp-y.scope") is None
            assert peer.connections == 2

    asyncio.run(scenario())


def test_a_connection_that_ends_during_a_call_is_unavailable_and_replaced(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        peer = Peer(hang_up=1)
        async with serving(peer, tmp_path) as systemd:
            with caplog.at_level(logging.WARNING, logger="runtime.systemd.manager"):
                assert await systemd.unit_state("crisp-x.scope") is None
            assert "broke during Subscribe: the connection ended before the reply arrived; trying a new " \
                   "connection (2 of 3)" in caplog.text
            assert peer.connections == 2
            # the call itself says so (its caller leaving after the end no longer trips over a forgotten reply)
            peer.hang_up = 10
            assert systemd.endpoint is not None
            cut = await Connection.open(systemd.endpoint, 1.0)
            with pytest.raises(errors.Unavailable, match="broke during Subscribe"):
                await cut.call(manager_call("Subscribe"), 1.0)
            await cut.close()

    asyncio.run(scenario())


def test_no_answer_on_any_connection_is_deadline_exceeded_within_the_timeout(tmp_path: Path) -> None:
    async def scenario() -> None:
        peer = Peer(silent=10)
        async with serving(peer, tmp_path) as systemd:
            began = time.monotonic()
            with pytest.raises(errors.DeadlineExceeded, match="no reply to Subscribe"):
                await systemd.unit_state("crisp-x.scope")
            assert time.monotonic() - began < 3.0  # three tries of a third of the timeout each
            assert peer.connections == 3

    asyncio.run(scenario())
