"""Terminals: receiving the pty master the executor sends over `--console-socket`, for the container's init and
for a tty exec alike, and window sizes asked for in frames."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

from shim.io import pty
from shim.log import log
from shim.loop import Loop

CONSOLE_TIMEOUT = 10.0  # the pty master must arrive this long after the executor returned


def close_console(loop: Loop, listener: socket.socket) -> None:
    loop.forget(listener.fileno())
    listener.close()


def receive_console(loop: Loop, listener: socket.socket, done: Callable[[int, str], None]) -> None:
    """Wait for the pty master on `listener` (the executor has returned successfully); then close the listener
    and call `done(master, "")`, or `done(-1, why)` when none came within CONSOLE_TIMEOUT."""
    timer = 0

    def finish(master: int, error: str) -> None:
        close_console(loop, listener)
        done(master, error)

    def on_console() -> None:
        try:
            master = pty.receive_master(listener)
        except OSError as exc:
            loop.cancel(timer)
            finish(-1, f"no pty master from the executor: {exc}")
            return
        if master is not None:
            loop.cancel(timer)
            finish(master, "")

    timer = loop.call_later(CONSOLE_TIMEOUT, lambda: finish(-1, "the executor sent no pty master"))
    loop.add_reader(listener.fileno(), on_console)
    on_console()


def resize_from_frame(fd: int, payload: bytes) -> None:
    """A resize frame's JSON {"width", "height"} applied to a pty master; a bad one is logged and ignored."""
    try:
        size = json.loads(payload)
        pty.set_window_size(fd, int(size["width"]), int(size["height"]))
    except (ValueError, KeyError, TypeError, OSError) as exc:
        log(f"ignoring a bad resize request: {exc}")
