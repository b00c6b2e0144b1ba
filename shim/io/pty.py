"""Terminals: the pty master arrives from the executor over `--console-socket` (SCM_RIGHTS); window sizes."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios

_WINSIZE = struct.Struct("HHHH")


def console_listener(name: str) -> socket.socket:
    """A unix socket for the executor's --console-socket. `name` is relative to the shim's cwd (the bundle), so
    the bundle path can be longer than sun_path allows."""
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(name)
    finally:
        os.umask(old)
    sock.listen(1)
    sock.setblocking(False)
    return sock


def receive_master(listener: socket.socket) -> int | None:
    """The pty master fd sent by the executor; None while nobody has connected yet."""
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return None
    with conn:
        # the executor has finished (it sends before it exits), so the message is there or coming at once
        conn.settimeout(5.0)
        _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
    if not fds:
        raise OSError("the console socket message carried no fd")
    master = fds[0]
    os.set_inheritable(master, False)
    return master


def set_window_size(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, _WINSIZE.pack(height, width, 0, 0))


def window_size(fd: int) -> tuple[int, int]:
    height, width, _, _ = _WINSIZE.unpack(fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * _WINSIZE.size))
    return width, height
