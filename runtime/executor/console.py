"""process.terminal: a pty from the container's own devpts, its master handed over --console-socket."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios

from runtime import errors
from runtime.linux import syscalls as sc

TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441


def connect_console_socket(path: str) -> socket.socket:
    """Connected before any namespace is joined: the path is the host's."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise errors.InvalidArgument(f"--console-socket {path}: {exc.strerror}") from None
    return sock


def _bind_console(sys: sc.Syscalls, slave: int) -> None:
    """Bind the pty we hold (by fd, not by a /dev/pts path a volume could cover) onto /dev/console (by fd)."""
    fd = os.open("/dev/console", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    target = sys.openat2(sc.AT_FDCWD, "/dev/console", os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW, 0,
                         sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS)
    try:
        tree = sys.open_tree(slave, "", sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_EMPTY_PATH)
        try:
            sys.move_mount(tree, "", target, "", sc.MOVE_MOUNT_F_EMPTY_PATH | sc.MOVE_MOUNT_T_EMPTY_PATH)
        finally:
            os.close(tree)
    finally:
        os.close(target)


def setup_console(sys: sc.Syscalls, console: socket.socket, mount_console: bool,
                  size: tuple[int, int] | None = None) -> None:
    """Open a pty inside the container (after pivot_root), send its master, make the slave our stdio and
    controlling terminal; with `mount_console`, bind the slave onto /dev/console as runc does. `size`
    (process.consoleSize, width x height) is set before the process can ask for it."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        if size is not None and size[0] > 0 and size[1] > 0:
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
        number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, struct.pack("I", 0)))[0]
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
        slave_path = f"/dev/pts/{number}"
        if mount_console:
            try:
                _bind_console(sys, slave)
            except OSError as exc:
                raise errors.FailedPrecondition(f"cannot bind {slave_path} on /dev/console: {exc.strerror}") from None
        socket.send_fds(console, [slave_path.encode()], [master])
    finally:
        os.close(master)
        console.close()
    for target in (0, 1, 2):
        os.dup2(slave, target)
    os.close(slave)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
