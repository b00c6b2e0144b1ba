"""A pod's namespaces, set up from inside: the hostname, `lo` up, the pod's sysctls (`set_up`).

Runs in a process forked from the shim zygote (`forked.py`) once it is in the pod's new namespaces. Standard
library only.
"""

from __future__ import annotations

import fcntl
import socket
import struct
from typing import Any

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = "16sH22x"  # struct ifreq: name, flags, padding to 40 bytes


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(_IFREQ, b"lo", 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | IFF_UP))


class SetupFailed(Exception):
    """A step of `set_up` failed: the message names the step and the kernel's words."""


def set_up(request: dict[str, Any]) -> None:
    """Inside the new namespaces: the hostname, lo up, the sysctls (what `request` asks for)."""
    step = ""
    try:
        if request.get("hostname"):
            step = f"sethostname {request['hostname']!r}"
            socket.sethostname(request["hostname"])
        if request.get("loopback"):
            step = "bringing lo up"
            loopback_up()
        for path, value in request.get("sysctls", []):
            step = f"sysctl {path[len('/proc/sys/'):].replace('/', '.')} = {value!r}"
            with open(path, "w") as f:
                f.write(value)
    except OSError as exc:
        raise SetupFailed(f"{step}: {exc.strerror}") from None

