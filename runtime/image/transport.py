"""The registry client's HTTP plumbing: every request can be cut off wherever it is blocked.

A registry may answer a request for ever: headers one byte at a time, a manifest that never ends, a body that
drips. Per-read timeouts do not end that (each byte resets them), and a thread blocked in a read is deaf to the
pull being cancelled. So every request runs inside a `Request` that knows its sockets (the connection classes
here report them, redirects included) and has a deadline: the client's `Reaper` thread shuts the sockets of a
request whose deadline passed, and a session's abort shuts those of all its requests, so the blocked read returns
at once. Bodies are read with a cap. Connecting has its own timeout (urllib3's).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

log = logging.getLogger(__name__)

_current = threading.local()


class Request:
    """One request in flight (with its redirects): its sockets and its deadline (monotonic; None: none)."""

    def __init__(self, what: str, deadline: float | None) -> None:
        self.what = what
        self.deadline = deadline
        self.expired = False  # its deadline passed: its sockets were shut
        self.aborted = False  # its session was aborted: its sockets were shut
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def attach(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if sock not in self._sockets:
                self._sockets.append(sock)
            cut = self.expired or self.aborted
        if cut:
            _shut(sock)

    def cut(self, *, expired: bool = False, aborted: bool = False) -> None:
        with self._lock:
            self.expired = self.expired or expired
            self.aborted = self.aborted or aborted
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class Reaper:
    """One thread per client that cuts off the requests whose deadline has passed (started on first use)."""

    def __init__(self) -> None:
        self._requests: set[Request] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, request: Request) -> None:
        with self._cond:
            self._requests.add(request)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="crisp-registry-reaper", daemon=True)
                self._thread.start()
            self._cond.notify()

    def discard(self, request: Request) -> None:
        with self._cond:
            self._requests.discard(request)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                due = [r for r in self._requests if r.deadline is not None and r.deadline <= now]
                for request in due:
                    self._requests.discard(request)
                    log.info("%s: deadline passed, cutting it off", request.what)
                    request.cut(expired=True)
                upcoming = [r.deadline for r in self._requests if r.deadline is not None]
                self._cond.wait(min(1.0, max(0.0, min(upcoming) - now)) if upcoming else 1.0)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(5)


class Requests:
    """The requests of one session (one pull): `abort()` cuts them all, and any made later."""

    def __init__(self, reaper: Reaper) -> None:
        self._reaper = reaper
        self._live: set[Request] = set()
        self._lock = threading.Lock()
        self.aborted = False

    @contextlib.contextmanager
    def request(self, what: str, timeout: float | None) -> Iterator[Request]:
        """Requests made by this thread inside the block are tracked as one `Request`."""
        request = Request(what, None if timeout is None else time.monotonic() + timeout)
        with self._lock:
            self._live.add(request)
            if self.aborted:
                request.cut(aborted=True)
        self._reaper.add(request)
        outer = getattr(_current, "request", None)
        _current.request = request
        try:
            yield request
        finally:
            _current.request = outer
            self._reaper.discard(request)
            with self._lock:
                self._live.discard(request)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            live = list(self._live)
        for request in live:
            request.cut(aborted=True)


def _attach(conn: HTTPConnection) -> None:
    request = getattr(_current, "request", None)
    if request is not None:
        request.attach(conn.sock)


class _TrackedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _attach(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)  # a kept-alive connection: connect() is not called again
        super().request(*args, **kwargs)


class _TrackedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _attach(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)
        super().request(*args, **kwargs)


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


def pool_manager(**kwargs: Any) -> urllib3.PoolManager:
    """A PoolManager whose connections report their sockets to the thread's current `Request`."""
    manager = urllib3.PoolManager(**kwargs)
    manager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}
    return manager


class TooLarge(Exception):
    pass


def read_capped(resp: urllib3.BaseHTTPResponse, limit: int) -> bytes:
    """The whole body, at most `limit` bytes: more (by Content-Length or by what comes) raises TooLarge before
    anything past limit+1 is read."""
    length = resp.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise TooLarge(f"{length} bytes announced")
    body = resp.read(limit + 1)
    if len(body) > limit:
        raise TooLarge("more was sent")
    return body


def discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Done with a response whose body may be unread or endless: close its connection (never drain it)."""
    with contextlib.suppress(Exception):
        resp.close()
    with contextlib.suppress(Exception):
        resp.release_conn()
