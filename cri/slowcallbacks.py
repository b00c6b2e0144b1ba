"""The debug check that crispd never blocks its event loop (`[debug] slow_callback_ms`).

asyncio's debug mode logs every callback that took longer than the threshold, in wall time. On a busy host that wall
time also holds the time the kernel kept the loop's thread waiting for a CPU (measured at 50-900 ms per callback at
a load of 15 on 2 cores, for callbacks that ran for well under a millisecond): that is the host's, not crispd
blocking its loop. While the check is on, each callback also notes its thread's run-queue delay
(`/proc/thread-self/schedstat`, second field), and a callback is reported slow only when what is left, the time it
ran or blocked, is over the threshold. Its report says how much of the wall time was spent waiting for a CPU."""

from __future__ import annotations

import asyncio.events
import contextlib
import logging
import os
from collections.abc import Callable, Iterator

_SCHEDSTAT = "/proc/thread-self/schedstat"
_SLOW = "Executing %s took %.3f seconds"
_installed: _Filter | None = None


class _RunQueueDelay:
    """The run-queue delay (seconds) of the last callback the loop's thread ran."""

    def __init__(self) -> None:
        self.fd = os.open(_SCHEDSTAT, os.O_RDONLY | os.O_CLOEXEC)
        self.last = 0.0

    def now(self) -> float:
        fields = os.pread(self.fd, 128, 0).split()
        return int(fields[1]) / 1e9 if len(fields) > 1 else 0.0


class _Filter(logging.Filter):
    def __init__(self, delay: _RunQueueDelay, threshold: float) -> None:
        super().__init__()
        self.delay = delay
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _SLOW or not isinstance(record.args, tuple) or len(record.args) != 2:
            return True
        waited, took = self.delay.last, record.args[1]
        if isinstance(took, float) and took - waited < self.threshold:
            return False
        record.msg = _SLOW + " (%.3f of them waiting for a CPU)"
        record.args = (*record.args, waited)
        return True


def install(threshold: float) -> Callable[[], None]:
    """Count only the time a callback ran or blocked against `threshold` (seconds), in the loop thread that calls
    this, with its loop in debug mode. Returns what undoes it (tests install it around one loop); while it is
    installed, a second install only changes the threshold until it is undone."""
    global _installed
    if _installed is not None:
        outer, before = _installed, _installed.threshold
        outer.threshold = threshold
        return lambda: setattr(outer, "threshold", before)
    try:
        delay = _RunQueueDelay()
    except OSError:
        return lambda: None  # no schedstat (a kernel without CONFIG_SCHED_INFO): wall time it is
    run = asyncio.events.Handle._run

    def timed_run(handle: asyncio.events.Handle) -> None:
        before = delay.now()
        try:
            run(handle)
        finally:
            delay.last = delay.now() - before

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign,assignment]
    log_filter = _installed = _Filter(delay, threshold)
    logging.getLogger("asyncio").addFilter(log_filter)

    def uninstall() -> None:
        global _installed
        asyncio.events.Handle._run = run  # type: ignore[method-assign]
        logging.getLogger("asyncio").removeFilter(log_filter)
        os.close(delay.fd)
        _installed = None

    return uninstall


@contextlib.contextmanager
def installed(threshold: float) -> Iterator[None]:
    uninstall = install(threshold)
    try:
        yield
    finally:
        uninstall()
