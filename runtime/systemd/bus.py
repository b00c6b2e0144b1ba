"""One asyncio D-Bus connection to systemd: its private socket, or the system bus.

jeepney supplies the wire format and the matching of replies and signals; this module opens the socket,
authenticates (SASL EXTERNAL), on a message bus says Hello and adds match rules, and runs one receiving task.

systemd's private socket (`/run/systemd/private`, root only) is a direct connection to PID 1: there is no bus
daemon, so no Hello and no AddMatch, and systemd sends its signals to every such connection. It is what go-systemd
uses for root, and the only way on a kind node, which runs no dbus-daemon. `auto` takes it when it exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jeepney import DBusAddress, HeaderFields, MatchRule, Message, MessageType, new_method_call
from jeepney.auth import BEGIN, AuthenticationError, Authenticator
from jeepney.bus import get_connectable_addresses
from jeepney.bus_messages import message_bus
from jeepney.io.asyncio import DBusConnection
from jeepney.io.common import FilterHandle, MessageFilters, RouterClosed

from runtime import errors

PRIVATE_SOCKET = "/run/systemd/private"
SYSTEM_BUS_ADDRESS = "unix:path=/run/dbus/system_bus_socket"
BUS_CHOICES = ("auto", "private", "system")

log = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
MANAGER = DBusAddress("/org/freedesktop/systemd1", bus_name=SYSTEMD, interface=f"{SYSTEMD}.Manager")


class BusError(errors.CrispError):
    """systemd (or the bus) answered a call with a D-Bus error; `name` is the error's name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}" if message else name)
        self.name = name


@dataclass(frozen=True)
class Endpoint:
    """Where to connect: a socket path ("\\0name" for an abstract one), and whether it is systemd itself."""

    path: str
    direct: bool

    def __str__(self) -> str:
        return f"{self.path} ({'systemd private socket' if self.direct else 'system bus'})"


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def find_endpoint(bus: str, env: Mapping[str, str] | None = None) -> Endpoint:
    """`auto`: systemd's private socket when it exists, else the system bus; `private` or `system` by name.
    Blocking (a stat): call it from a worker thread."""
    if bus not in BUS_CHOICES:
        raise errors.InvalidArgument(f"systemd bus {bus!r} is not one of {', '.join(BUS_CHOICES)}")
    if bus == "private" or (bus == "auto" and _is_socket(PRIVATE_SOCKET)):
        return Endpoint(PRIVATE_SOCKET, direct=True)
    env = os.environ if env is None else env
    address = env.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS_ADDRESS
    try:
        return Endpoint(next(get_connectable_addresses(address)), direct=False)
    except (RuntimeError, ValueError, StopIteration) as exc:
        raise errors.InvalidArgument(f"cannot use the system bus address {address!r}: {exc}") from None


def unwrap(reply: Message) -> tuple[Any, ...]:
    """The body of a method reply; BusError for an error reply."""
    if reply.header.message_type == MessageType.error:
        name = str(reply.header.fields.get(HeaderFields.error_name, "org.freedesktop.DBus.Error.Failed"))
        text = str(reply.body[0]) if reply.body and isinstance(reply.body[0], str) else ""
        raise BusError(name, text)
    return tuple(reply.body)


class _Replies:
    """The calls waiting for their replies, by serial. When the connection ends, each fails with RouterClosed;
    its entry stays until its caller leaves (jeepney's ReplyMatcher forgets them all then, and a caller that leaves
    afterwards got a KeyError instead of its RouterClosed)."""

    def __init__(self) -> None:
        self._waiting: dict[int, asyncio.Future[Message]] = {}

    @contextlib.contextmanager
    def catch(self, serial: int) -> Iterator[asyncio.Future[Message]]:
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[serial] = future
        try:
            yield future
        finally:
            self._waiting.pop(serial, None)

    def dispatch(self, message: Message) -> bool:
        """Hand a reply to its caller; False when no call waits for it (a signal, or a reply too late)."""
        future = self._waiting.get(message.header.fields.get(HeaderFields.reply_serial, -1))
        if future is None or future.done():
            return False
        future.set_result(message)
        return True

    def fail_all(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(RouterClosed("the connection ended before the reply arrived"))


class Connection:
    """An open, authenticated connection; one task receives its messages and hands out replies and signals."""

    def __init__(self, endpoint: Endpoint, conn: DBusConnection) -> None:
        self.endpoint = endpoint
        self._conn = conn
        self._replies = _Replies()
        self._filters = MessageFilters()
        self._matches: set[str] = set()
        self._receiver = asyncio.create_task(self._receive(), name=f"dbus-receiver {endpoint.path}")

    @classmethod
    async def open(cls, endpoint: Endpoint, time_limit: float) -> Connection:
        try:
            async with asyncio.timeout(time_limit):
                reader, writer = await asyncio.open_unix_connection(endpoint.path)
                try:
                    await _authenticate(reader, writer)
                except BaseException:
                    writer.close()
                    raise
        except TimeoutError:
            raise errors.Unavailable(f"systemd: no answer from {endpoint} within {time_limit:g}s") from None
        except (OSError, EOFError, AuthenticationError) as exc:
            raise errors.Unavailable(f"systemd: cannot connect to {endpoint}: {exc}") from None
        self = cls(endpoint, DBusConnection(reader, writer))
        if not endpoint.direct:
            try:
                (name,) = await self.call(new_method_call(message_bus, "Hello"), time_limit)
            except BaseException:
                await self.close()
                raise
            self._conn.unique_name = name
        return self

    async def _receive(self) -> None:
        try:
            while True:
                message = await self._conn.receive()
                if self._replies.dispatch(message):
                    continue
                for handle in list(self._filters.matches(message)):
                    handle.queue.put_nowait(message)
        except (OSError, EOFError, ValueError) as exc:  # closed, reset, or a message jeepney cannot parse
            log.info("systemd: connection to %s ended: %s", self.endpoint, exc or type(exc).__name__)
        finally:
            self._replies.fail_all()

    @property
    def closed(self) -> bool:
        return self._receiver.done()

    async def call(self, message: Message, time_limit: float) -> tuple[Any, ...]:
        """Send a method call and wait for its reply (BusError for an error reply)."""
        what = str(message.header.fields.get(HeaderFields.member, "call"))
        if self.closed:
            raise errors.Unavailable(f"systemd: the connection to {self.endpoint} is closed")
        serial = next(self._conn.outgoing_serial)
        try:
            async with asyncio.timeout(time_limit):
                with self._replies.catch(serial) as reply:
                    await self._conn.send(message, serial=serial)
                    answer: Message = await reply
        except TimeoutError:
            raise errors.DeadlineExceeded(f"systemd: no reply to {what} within {time_limit:g}s") from None
        except (RouterClosed, OSError) as exc:
            raise errors.Unavailable(f"systemd: the connection to {self.endpoint} broke during {what}: "
                                     f"{exc or type(exc).__name__}") from None
        return unwrap(answer)

    async def subscribe(self, rule: MatchRule, time_limit: float) -> None:
        """Make sure messages matching `rule` reach this connection (a bus needs AddMatch; systemd's own socket
        sends every signal)."""
        text = rule.serialise()
        if self.endpoint.direct or text in self._matches:
            return
        await self.call(message_bus.AddMatch(rule), time_limit)
        self._matches.add(text)

    def signals(self, rule: MatchRule) -> FilterHandle:
        """A filter whose queue (unbounded) receives every incoming message matching `rule` from now on; use it as
        a context manager (`with conn.signals(rule) as queue`)."""
        return FilterHandle(self._filters, rule, asyncio.Queue())

    async def next_signal(self, queue: asyncio.Queue[Message], what: str) -> Message:
        """The next message of a `signals` queue; Unavailable when the connection ends first."""
        if queue.empty() and self.closed:
            raise errors.Unavailable(f"systemd: the connection to {self.endpoint} ended while waiting for {what}")
        getter = asyncio.ensure_future(queue.get())
        try:
            await asyncio.wait({getter, self._receiver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        raise errors.Unavailable(f"systemd: the connection to {self.endpoint} ended while waiting for {what}")

    async def close(self) -> None:
        self._receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._receiver
        with contextlib.suppress(Exception):
            await self._conn.close()


async def _authenticate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """SASL EXTERNAL (our uid), as jeepney's own clients do it."""
    auth = Authenticator()
    for line in auth:
        writer.write(line)
        await writer.drain()
        data = await reader.read(1024)
        if not data:
            raise EOFError("the socket closed during authentication")
        auth.feed(data)
    writer.write(BEGIN)
    await writer.drain()


def manager_call(method: str, signature: str | None = None, body: tuple[Any, ...] = ()) -> Message:
    """A method call to systemd's Manager object."""
    return new_method_call(MANAGER, method, signature, body)


def properties_call(path: str, interface: str, name: str) -> Message:
    """org.freedesktop.DBus.Properties.Get of one property of a systemd object."""
    target = DBusAddress(path, bus_name=SYSTEMD, interface="org.freedesktop.DBus.Properties")
    return new_method_call(target, "Get", "ss", (interface, name))
