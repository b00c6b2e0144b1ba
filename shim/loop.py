"""The shim's event loop: one thread, `selectors`, timers, SIGCHLD through a wakeup pipe, and child reaping.

Signal handlers only wake the loop (gunicorn's arbiter does the same); the loop reaps every child with
`waitpid(-1, WNOHANG)` and hands each exit to whoever registered the pid. An exit of a pid nobody registered yet is
kept for a while, so a process that ends before its pid is known (a container that exits before `create` or
`start` returns, an exec that ends at once) is never lost.
"""

from __future__ import annotations

import errno
import heapq
import os
import selectors
import signal
import time
from collections.abc import Callable

Callback = Callable[[], None]
ExitCallback = Callable[[int], None]

# how long the exit of a pid that nobody has claimed yet is kept
UNCLAIMED_TTL = 300.0


class Loop:
    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._readers: dict[int, Callback] = {}
        self._writers: dict[int, Callback] = {}
        self._timers: list[tuple[float, int, Callback]] = []
        self._cancelled: set[int] = set()
        self._seq = 0
        self._children: dict[int, ExitCallback] = {}
        # pid -> (monotonic time it was reaped, wait status)
        self._unclaimed: dict[int, tuple[float, int]] = {}
        self.running = True
        self._prune_seq = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.add_reader(self._wake_r, self._on_wakeup)

    # --- fds ------------------------------------------------------------------------------------------------

    def _update(self, fd: int) -> None:
        events = (selectors.EVENT_READ if fd in self._readers else 0) | \
                 (selectors.EVENT_WRITE if fd in self._writers else 0)
        try:
            key = self.selector.get_key(fd)
        except KeyError:
            key = None
        if key is None:
            if events:
                self.selector.register(fd, events)
        elif events == 0:
            self.selector.unregister(fd)
        elif key.events != events:
            self.selector.modify(fd, events)

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._readers[fd] = callback
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._writers[fd] = callback
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    def forget(self, fd: int) -> None:
        """Stop watching fd (before it is closed)."""
        self._readers.pop(fd, None)
        self._writers.pop(fd, None)
        self._update(fd)

    # --- timers ---------------------------------------------------------------------------------------------

    def call_later(self, delay: float, callback: Callback) -> int:
        self._seq += 1
        heapq.heappush(self._timers, (time.monotonic() + delay, self._seq, callback))
        return self._seq

    def cancel(self, handle: int) -> None:
        self._cancelled.add(handle)

    # --- children -------------------------------------------------------------------------------------------

    def install_sigchld(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    def watch_child(self, pid: int, callback: ExitCallback, since: float | None = None) -> None:
        """Call back with the wait status when pid ends. `since`: a pid read from a pid file is claimed only if it
        was reaped after that monotonic time (older unclaimed exits of the same number were other processes)."""
        reaped = self._unclaimed.pop(pid, None)
        if reaped is not None and (since is None or reaped[0] >= since):
            status = reaped[1]
            self.call_later(0, lambda: callback(status))
            return
        self._children[pid] = callback

    def unwatch_child(self, pid: int) -> None:
        self._children.pop(pid, None)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            callback = self._children.pop(pid, None)
            if callback is None:
                self._unclaimed[pid] = (time.monotonic(), status)
            else:
                callback(status)

    def _prune_unclaimed(self) -> None:
        cutoff = time.monotonic() - UNCLAIMED_TTL
        for pid in [p for p, (when, _) in self._unclaimed.items() if when < cutoff]:
            del self._unclaimed[pid]

    def _on_wakeup(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        self.reap()

    # --- running --------------------------------------------------------------------------------------------

    def _next_timeout(self) -> float | None:
        while self._timers and self._timers[0][1] in self._cancelled:
            self._cancelled.discard(heapq.heappop(self._timers)[1])
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())

    def quiet(self, children: set[int]) -> bool:
        """Nothing under way: no write pending, no timer but the loop's own, no child watched but `children`."""
        if self._writers or set(self._children) - children:
            return False
        return all(seq in self._cancelled or seq == self._prune_seq for _, seq, _ in self._timers)

    def run(self) -> None:
        self._prune_seq = self.call_later(UNCLAIMED_TTL, self._prune_tick)
        while self.running:
            try:
                events = self.selector.select(self._next_timeout())
            except InterruptedError:
                continue
            for key, mask in events:
                fd = key.fd
                if mask & selectors.EVENT_READ:
                    cb = self._readers.get(fd)
                    if cb is not None:
                        cb()
                if mask & selectors.EVENT_WRITE:
                    cb = self._writers.get(fd)
                    if cb is not None:
                        cb()
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, seq, cb = heapq.heappop(self._timers)
                if seq in self._cancelled:
                    self._cancelled.discard(seq)
                    continue
                cb()

    def _prune_tick(self) -> None:
        self._prune_unclaimed()
        self._prune_seq = self.call_later(UNCLAIMED_TTL, self._prune_tick)

    def stop(self) -> None:
        self.running = False


def set_nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


def read_available(fd: int, size: int = 65536) -> bytes | None:
    """One non-blocking read: data, b"" at EOF (or EIO from a pty whose other side closed), None if nothing yet."""
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno == errno.EIO:
            return b""
        raise
