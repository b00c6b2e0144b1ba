"""The shim launcher (zygote): a small, pre-warmed, stdlib-only process that crispd starts with subprocess.

crispd never forks (it has threads, and a big process forks slowly), so it asks the zygote instead: one JSON
request per line on the zygote's stdin (`{"id": N, "config": {...ShimConfig}}`), one answer per line on its stdout
(`{"id": N, "ok": true, "pid": P, "start_time": T, "warnings": [...]}` or `{"id": N, "ok": false, "error": {"kind",
"message"}}`).
The pods' namespace work is forked from here too (`{"id": N, "work": "pin_namespaces" | "start_pod_init",
"request": {...}}`, runtime/namespaces/forked.py): the worker's answer dict is relayed the same way.

Everything a shim runs is imported here once; each shim is forked after `gc.freeze()`, so its pages stay shared
copy-on-write with the zygote and its siblings. The forked child starts a session of its own (crispd and the
zygote may die; the shim stays, then a child of init); the zygote ignores SIGCHLD, so the kernel reaps its
children and it never waits for one. The shim reports on a sync pipe that the zygote relays. The zygote runs
from a sealed memfd copy of the interpreter (runtime/linux/sealed.py), and so do its forks: a container's init,
forked from a shim, reaches no host binary through /proc/self/exe. The zygote ends when crispd closes its stdin
(or dies). It never moves itself or the shims into another cgroup: they stay in crispd's.
"""

from __future__ import annotations

import gc
import json
import os
import selectors
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any, NoReturn

# imported here, before any fork, so that every shim shares them (the executor's code too: the shim runs it in
# forks of itself, shim/executor.py; runtime.executor.cgroup imports runtime.cgroups on use, so that is named here)
import runtime.cgroups
import runtime.executor.container
import runtime.executor.main
import shim.delegate
import shim.main
import shim.server
from runtime.linux import syscalls
from runtime.namespaces import forked
from runtime.version import VERSION
from shim import protocol

# named, so that no linter drops them as unused
PRELOADED = (runtime.cgroups, runtime.executor.container, runtime.executor.main)


def _answer(message: dict[str, Any]) -> None:
    os.write(1, protocol.encode(message))


# the pod namespace work crispd may ask for: the function runs in a detached worker and returns its answer
WORK: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pin_namespaces": forked.pin_namespaces, "start_pod_init": forked.start_pod_init}
Pending = dict[int, tuple[Any, bytearray, str]]  # sync pipe -> (request id, what came so far, if it dies: why)
# fds no child keeps (every fork closes them first)
ZYGOTE_ONLY: set[int] = set()


def _run_work(name: str, request: dict[str, Any], sync_fd: int) -> NoReturn:
    """The body of a forked worker: stdin and stdout (crispd's pipes) go; one answer line on the sync pipe."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    try:
        answer = WORK[name](request)
    except Exception as exc:  # whatever went wrong is said to crispd, not lost with the worker
        answer = {"ok": False, "error": {"kind": "Internal", "message": f"{name}: {type(exc).__name__}: {exc}"}}
    os.write(sync_fd, protocol.encode(answer))
    os._exit(0)


def _fork_detached(body: Callable[[int], NoReturn], selector: selectors.BaseSelector, pending: Pending) -> int:
    """Fork a process of its own session that runs `body(sync fd)`; returns the read end of its sync pipe. One
    fork, no wait: the zygote ignores SIGCHLD (the kernel reaps its children), and the child takes SIGCHLD back
    to its default first thing, since an ignored SIGCHLD would be its children's too and would survive an exec
    (a worker waits for the processes it forks; a pod init reaps zombies)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    gc.freeze()  # everything alive now is left alone by the children's collector: no copy-on-write from gc
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(r)
            selector.close()
            for fd in ZYGOTE_ONLY:  # the delegates' listener, the spare's socket: the zygote's alone
                os.close(fd)
            for fd in pending:
                os.close(fd)
            os.setsid()
            body(w)
        finally:
            os._exit(127)
    os.close(w)
    return r


# a monitor's request for a delegate: one line and the connection the delegate answers on
DELEGATE_REQUEST_MAX = 1 << 20
DELEGATE_RECV_TIMEOUT = 2.0


class Spare:
    """A delegate forked before its request (the fork is ~1.5 ms of an exec's path otherwise): it waits on a
    seqpacket socket for the request and its fds, and ends with the zygote (the socket's end)."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None

    def fork(self, selector: selectors.BaseSelector, pending: Pending) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)

        def body(sync_fd: int) -> NoReturn:
            os.close(sync_fd)
            ours.close()  # the zygote's end: its close (the zygote gone) must reach us
            null = os.open(os.devnull, os.O_RDWR)  # crispd's pipes and stderr are the zygote's, not ours
            for std in (0, 1, 2):
                os.dup2(null, std)
            os.close(null)
            try:
                data, fds, _, _ = socket.recv_fds(theirs, DELEGATE_REQUEST_MAX, 2)
            except OSError:
                os._exit(0)
            theirs.close()
            if not data or not fds:
                os._exit(0)  # the zygote is gone: nobody will ask
            shim.delegate.become_delegate(json.loads(data), fds[0], fds[1] if len(fds) > 1 else -1)

        try:
            os.close(_fork_detached(body, selector, pending))
        except OSError:
            ours.close()
            return  # the next request forks its delegate itself
        finally:
            theirs.close()
        self.sock = ours
        ZYGOTE_ONLY.add(ours.fileno())

    def take(self, request: dict[str, Any], fds: list[int]) -> bool:
        """Hand the request to the spare; False when there is none (or it is gone)."""
        sock, self.sock = self.sock, None
        if sock is None:
            return False
        ZYGOTE_ONLY.discard(sock.fileno())
        with sock:
            try:
                socket.send_fds(sock, [json.dumps(request).encode()], fds)
            except OSError:
                return False
        return True


def _delegate(listener: socket.socket, selector: selectors.BaseSelector, pending: Pending, spare: Spare) -> None:
    """A crisp-monitor asks for a delegate (shim/delegate.py): the spare takes the request and its connection (or
    a delegate is forked for it), and a new spare is forked."""
    try:
        conn, _ = listener.accept()
    except OSError:
        return
    fds: list[int] = []
    with conn:
        conn.settimeout(DELEGATE_RECV_TIMEOUT)
        data = bytearray()
        try:
            while b"\n" not in data and len(data) < DELEGATE_REQUEST_MAX:
                chunk, got, _, _ = socket.recv_fds(conn, 65536, 4)
                fds += got
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    if len(fds) not in (1, 2):
        for fd in fds:
            os.close(fd)
        return  # nobody to answer: the monitor sees no delegate and reports it
    fd, ctl = fds[0], fds[1] if len(fds) == 2 else -1
    try:
        request = json.loads(bytes(data).partition(b"\n")[0])
        if not isinstance(request, dict) or request.get("work") != "shim_op":
            raise ValueError("not a shim_op request")
        shim.delegate.check_request(request)
    except ValueError as exc:
        _refuse(fd, "InvalidArgument", f"bad delegate request: {exc}")
        if ctl >= 0:
            os.close(ctl)
        return
    def body(sync_fd: int) -> NoReturn:
        os.close(sync_fd)
        shim.delegate.become_delegate(request, fd, ctl)

    try:
        if not spare.take(request, [fd] if ctl < 0 else [fd, ctl]):
            os.close(_fork_detached(body, selector, pending))
    except OSError as exc:
        _refuse(fd, "ResourceExhausted", f"cannot fork a delegate: {exc}")
    finally:
        if ctl >= 0:
            os.close(ctl)
    os.close(fd)
    spare.fork(selector, pending)


def _refuse(fd: int, kind: str, message: str) -> None:
    with socket.socket(fileno=fd) as sock:
        sock.settimeout(DELEGATE_RECV_TIMEOUT)
        try:
            sock.sendall(protocol.encode(protocol.reply_error(kind, message)))
        except OSError:
            pass


def main() -> None:
    if len(sys.argv) > 2:  # the fd of the sealed copy of the interpreter the zygote runs from: exec'd, not needed
        os.close(int(sys.argv[2]))
    selector = selectors.DefaultSelector()
    pending: Pending = {}
    inbuf = bytearray()
    os.set_blocking(0, False)
    selector.register(0, selectors.EVENT_READ)
    listener: socket.socket | None = None
    if len(sys.argv) > 3:  # the listening socket crispd made for the monitors' delegate requests
        listener = socket.socket(fileno=int(sys.argv[3]))
        os.set_inheritable(listener.fileno(), False)
        listener.setblocking(False)
        selector.register(listener.fileno(), selectors.EVENT_READ)
        ZYGOTE_ONLY.add(listener.fileno())
    # open libc (and libseccomp) through ctypes once, here: every shim and every executor command shares the
    # handles (and never looks a library up itself)
    syscalls.preload()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # _fork_detached: the kernel reaps the zygote's children
    spare = Spare()
    if listener is not None:
        spare.fork(selector, pending)
    gc.freeze()
    _answer({"ready": True, "pid": os.getpid(), "version": VERSION})
    while True:
        for key, _ in selector.select():
            fd = int(key.fd)
            if fd == 0:
                try:
                    data = os.read(0, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    return  # crispd is gone or done with us
                inbuf += data
                while b"\n" in inbuf:
                    line, _, rest = bytes(inbuf).partition(b"\n")
                    inbuf[:] = rest
                    _handle(line, selector, pending)
                continue
            if listener is not None and fd == listener.fileno():
                _delegate(listener, selector, pending, spare)
                continue
            request_id, buf, died = pending[fd]
            data = os.read(fd, 65536)
            buf += data
            if data and b"\n" not in buf:
                continue
            selector.unregister(fd)
            os.close(fd)
            del pending[fd]
            try:
                report = json.loads(buf.partition(b"\n")[0]) if buf else None
            except ValueError:
                report = None
            if not isinstance(report, dict):
                report = {"ok": False, "error": {"kind": "Internal", "message": died}}
            _answer({"id": request_id, **report})


def _handle(line: bytes, selector: selectors.BaseSelector, pending: Pending) -> None:
    try:
        request = json.loads(line)
        request_id = request["id"]
        work = request.get("work")
        body = request["request"] if work is not None else request["config"]
        if not isinstance(body, dict):
            raise ValueError("config is not an object")
        if work is not None and work not in WORK:
            raise ValueError(f"no such work: {work!r}")
    except (ValueError, KeyError, TypeError) as exc:
        _answer({"id": None, "ok": False, "error": {"kind": "InvalidArgument", "message": f"bad request: {exc}"}})
        return
    if work is None:
        what, died = "a shim", "the shim died before it was ready (see its shim.log)"
        run: Callable[[int], NoReturn] = lambda w: shim.main.become_shim(body, w)  # noqa: E731
    else:
        what, died = f"a {work} worker", f"the zygote's {work} worker died before it answered"
        run = lambda w: _run_work(work, body, w)  # noqa: E731
    try:
        fd = _fork_detached(run, selector, pending)
    except OSError as exc:
        _answer({"id": request_id, "ok": False, "error": {"kind": "ResourceExhausted",
                                                          "message": f"cannot fork {what}: {exc}"}})
        return
    pending[fd] = (request_id, bytearray(), died)
    selector.register(fd, selectors.EVENT_READ)

if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
    sys.exit(0)
