"""Dialling ports inside a pod for port-forward, without crispd ever entering a namespace.

A pod with its own network namespace gets a helper (netns_helper.py under `nsenter --net`) for the length of the
session; it makes sockets in the pod's namespace and passes them to crispd, which connects them to
localhost:<port> there and relays them itself. A host-network pod's ports are dialled directly. As containerd
does, 127.0.0.1 is tried first, then ::1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys

from runtime import errors

log = logging.getLogger(__name__)

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netns_helper.py")
CONNECT_TIMEOUT = 10.0
HELPER_TIMEOUT = 10.0


async def _connect(sock: socket.socket, address: str, port: int) -> socket.socket:
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (address, port)), CONNECT_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _LocalhostDialer:
    async def _socket(self, family: socket.AddressFamily) -> socket.socket:
        raise NotImplementedError

    async def dial(self, port: int) -> socket.socket:
        try:
            return await _connect(await self._socket(socket.AF_INET), "127.0.0.1", port)
        except (OSError, TimeoutError) as v4:
            try:
                return await _connect(await self._socket(socket.AF_INET6), "::1", port)
            except (OSError, TimeoutError) as v6:
                raise errors.Unavailable(f"failed to connect to localhost:{port}: IPv4: {_describe(v4)}, "
                                         f"IPv6: {_describe(v6)}") from None

    async def close(self) -> None:
        pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT}s"
    return getattr(exc, "strerror", None) or str(exc)


class HostDialer(_LocalhostDialer):
    """A host-network pod: its localhost is crispd's."""

    async def _socket(self, family: socket.AddressFamily) -> socket.socket:
        return socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)


class NetnsDialer(_LocalhostDialer):
    """A pod with its own network namespace (the path of its pin)."""

    def __init__(self, netns_path: str, python: str = sys.executable) -> None:
        self.netns_path = netns_path
        self.python = python
        self._channel: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = asyncio.Lock()

    async def _start(self) -> socket.socket:
        if not await asyncio.to_thread(os.path.exists, self.netns_path):
            raise errors.NotFound(f"the network namespace {self.netns_path} is gone")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        argv = ["nsenter", f"--net={self.netns_path}", "--", self.python, "-I", "-S", HELPER]
        try:
            # spawned from a worker thread: starting a process can take the event loop longer than it may wait
            self._proc = await asyncio.to_thread(subprocess.Popen, argv, stdin=theirs.fileno(),
                                                 stdout=subprocess.DEVNULL, close_fds=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._channel = ours
        return ours

    async def _socket(self, family: socket.AddressFamily) -> socket.socket:
        async with self._lock:
            channel = self._channel or await self._start()
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(channel, b"6" if family == socket.AF_INET6 else b"4")
            answer: asyncio.Future[tuple[bytes, list[int]]] = loop.create_future()

            def readable() -> None:
                try:
                    message, fds, _, _ = socket.recv_fds(channel, 1024, 1)
                except BlockingIOError:
                    return
                except OSError as exc:
                    if not answer.done():
                        answer.set_exception(exc)
                    return
                if not answer.done():
                    answer.set_result((message, fds))
                else:
                    for fd in fds:
                        os.close(fd)

            loop.add_reader(channel.fileno(), readable)
            try:
                message, fds = await asyncio.wait_for(answer, HELPER_TIMEOUT)
            except TimeoutError:
                raise errors.Unavailable(f"the port-forward helper for {self.netns_path} did not answer") from None
            finally:
                loop.remove_reader(channel.fileno())
        if not fds:
            if not message:
                raise errors.Unavailable(f"the port-forward helper for {self.netns_path} exited (is the "
                                         "network namespace gone?)")
            raise errors.Unavailable(f"cannot make a socket in {self.netns_path}: "
                                     f"{message.decode(errors='replace').removeprefix('error ')}")
        return socket.socket(fileno=fds[0])

    async def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                await asyncio.to_thread(proc.wait, HELPER_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("the port-forward helper %d for %s did not exit: killing it", proc.pid, self.netns_path)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.to_thread(proc.wait)
