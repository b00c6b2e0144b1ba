"""crispd's client of systemd's Manager: transient units, their jobs, properties, stop and reset.

One connection, opened on first use and again after it broke (systemd re-executing, dbus-daemon restarting). A new
connection that gets no answer (to its authentication or to Subscribe) within a third of the timeout is given up
for another, at most three in all: the VM tier saw one stay unanswered for 30 s right after `systemctl restart
crispd`, while systemctl's own calls were answered. A
call that queues a job (StartTransientUnit, StopUnit) returns only once the job's `JobRemoved` signal arrived, with
its result checked: the filter for that signal is in place before the call is sent, so a job that finishes before
the reply is not missed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from jeepney import MatchRule

from runtime import errors
from runtime.systemd.bus import (
    MANAGER,
    BusError,
    Connection,
    Endpoint,
    find_endpoint,
    manager_call,
    properties_call,
)
from runtime.systemd.properties import Property

log = logging.getLogger(__name__)

JOB_REMOVED = MatchRule(type="signal", interface=MANAGER.interface, member="JobRemoved", path=MANAGER.object_path)
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"
DEFAULT_TIMEOUT = 30.0
CONNECT_ATTEMPTS = 3  # new connections tried within the timeout (each gets a third of it)
# a stop job waits for the unit's processes (SIGTERM, then SIGKILL after the unit's TimeoutStopSec, 90 s by
# default); crisp's units are empty or killed already when it stops them
DEFAULT_JOB_TIMEOUT = 120.0


class Systemd:
    """Transient units through systemd's D-Bus API (`bus`: auto | private | system)."""

    def __init__(self, bus: str = "auto", timeout: float = DEFAULT_TIMEOUT,
                 job_timeout: float = DEFAULT_JOB_TIMEOUT, endpoint: Endpoint | None = None) -> None:
        """`endpoint`: where to connect instead of the one `bus` names (tests)."""
        self.bus = bus
        self.endpoint = endpoint
        self.timeout = timeout
        self.job_timeout = job_timeout
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> Connection:
        async with self._lock:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            if self._conn is not None:
                await self._conn.close()
                self._conn = None
            endpoint = self.endpoint if self.endpoint is not None else await asyncio.to_thread(find_endpoint, self.bus)
            limit = self.timeout / CONNECT_ATTEMPTS
            for attempt in range(2, CONNECT_ATTEMPTS + 1):
                try:
                    conn = await self._open(endpoint, limit)
                    break
                except (errors.DeadlineExceeded, errors.Unavailable) as exc:
                    log.warning("systemd: %s; trying a new connection (%d of %d)", exc, attempt, CONNECT_ATTEMPTS)
            else:
                conn = await self._open(endpoint, limit)  # the last try: its failure is the caller's
            log.info("systemd: connected over %s", endpoint)
            self._conn = conn
            return conn

    @staticmethod
    async def _open(endpoint: Endpoint, time_limit: float) -> Connection:
        """A new connection, authenticated and subscribed to systemd's signals."""
        conn = await Connection.open(endpoint, time_limit)
        try:
            await conn.subscribe(JOB_REMOVED, time_limit)
            # on a bus, systemd sends its signals only while someone is subscribed
            await conn.call(manager_call("Subscribe"), time_limit)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _job(self, unit: str, method: str, signature: str, body: tuple[object, ...]) -> str:
        """Call a Manager method that queues a job for `unit`; wait for the job to end; its result (done,
        canceled, timeout, failed, dependency, skipped)."""
        conn = await self._connection()
        with conn.signals(JOB_REMOVED) as queue:
            (job,) = await conn.call(manager_call(method, signature, body), self.timeout)
            try:
                async with asyncio.timeout(self.job_timeout):
                    while True:
                        signal = await conn.next_signal(queue, f"the {method} job of {unit}")
                        _id, path, _unit, result = signal.body
                        if path == job:
                            return str(result)
            except TimeoutError:
                raise errors.DeadlineExceeded(
                    f"systemd: the {method} job of {unit} did not finish within {self.job_timeout:.0f}s") from None

    async def start_transient_unit(self, name: str, properties: Sequence[Property]) -> None:
        """Create and start a transient unit (a scope needs `PIDs`); returns once it runs. AlreadyExists when a
        unit of that name is loaded."""
        try:
            result = await self._job(name, "StartTransientUnit", "ssa(sv)a(sa(sv))", (name, "fail", list(properties),
                                                                                     []))
        except BusError as exc:
            if exc.name == UNIT_EXISTS:
                raise errors.AlreadyExists(f"systemd unit {name} already exists") from None
            raise
        if result != "done":
            # a unit whose start failed stays loaded as "failed": reset it, so that its name can be used again
            await self.reset_failed_unit(name)
            raise errors.FailedPrecondition(f"systemd could not start {name}: job {result}")
        log.debug("systemd: started %s", name)

    async def stop_unit(self, name: str) -> None:
        """Stop a unit and wait until it is stopped (its processes killed, its cgroup gone); a unit that is not
        loaded is stopped already."""
        try:
            result = await self._job(name, "StopUnit", "ss", (name, "replace"))
        except BusError as exc:
            if exc.name == NO_SUCH_UNIT:
                return
            raise
        if result not in ("done", "skipped"):
            raise errors.FailedPrecondition(f"systemd could not stop {name}: job {result}")
        log.debug("systemd: stopped %s", name)

    async def reset_failed_unit(self, name: str) -> None:
        """Forget a failed unit (a stopped transient unit is gone by itself; a failed one stays until this)."""
        conn = await self._connection()
        try:
            await conn.call(manager_call("ResetFailedUnit", "s", (name,)), self.timeout)
        except BusError as exc:
            if exc.name != NO_SUCH_UNIT:
                raise

    async def set_unit_properties(self, name: str, properties: Sequence[Property]) -> None:
        """Change properties of a running unit (runtime only: nothing is written to /etc)."""
        if not properties:
            return
        conn = await self._connection()
        try:
            await conn.call(manager_call("SetUnitProperties", "sba(sv)", (name, True, list(properties))),
                            self.timeout)
        except BusError as exc:
            if exc.name == NO_SUCH_UNIT:
                raise errors.NotFound(f"systemd unit {name} is not loaded") from None
            raise

    async def unit_state(self, name: str) -> str | None:
        """A loaded unit's ActiveState (active, failed, ...); None when no unit of that name is loaded."""
        conn = await self._connection()
        try:
            (path,) = await conn.call(manager_call("GetUnit", "s", (name,)), self.timeout)
        except BusError as exc:
            if exc.name == NO_SUCH_UNIT:
                return None
            raise
        ((_signature, state),) = await conn.call(
            properties_call(str(path), "org.freedesktop.systemd1.Unit", "ActiveState"), self.timeout)
        return str(state)

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None
