"""sd_notify: tell the service manager about crispd's state (`Type=notify` units).

systemd passes the socket in $NOTIFY_SOCKET (a path, or "@name" for an abstract socket); one datagram per message,
e.g. "READY=1", "STOPPING=1", "STATUS=...". Without $NOTIFY_SOCKET (not started by systemd) nothing is sent.
A datagram to a local socket does not block; a full socket drops the message rather than waiting.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify_socket(env: Mapping[str, str] | None = None) -> str | None:
    """The address from $NOTIFY_SOCKET, with an abstract socket's "@" turned into a NUL; None when unset."""
    value = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if not value.startswith("/"):
        log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract socket: not notifying", value)
        return None
    return value


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `state` (newline-separated KEY=VALUE lines); True when it was sent."""
    address = notify_socket(env)
    if address is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError as exc:
            log.warning("sd_notify %s to %s failed: %s", state.split("\n", 1)[0], address.lstrip("\0"), exc)
            return False
    log.debug("sd_notify: %s", state.replace("\n", " "))
    return True
