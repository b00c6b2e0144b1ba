"""A pod's namespaces, set up from inside: the hostname, `lo` up, the pod's sysctls (`set_up`).

A pod without a user namespace gets it in a process forked from the zygote (`forked.py`). A user-namespaced pod
still runs this file as a program (`pin.py`: `python -I -S <this file>`, under util-linux `unshare`, then
`usernsexec` + `nsenter`): standard library only, it imports as little as possible. Failures: one JSON line on
stderr, exit status 1.
"""

from __future__ import annotations

import fcntl
import json
import socket
import struct
import sys
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


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    try:
        if request.get("await_maps"):
            # a new user namespace: crispd writes its id maps while we are in it, then says go
            print("ready", flush=True)
            if sys.stdin.readline().strip() != "go":
                raise SetupFailed("waiting for the user namespace's id maps: crispd did not map the user namespace")
        set_up(request)
    except SetupFailed as exc:
        print(json.dumps({"kind": "InvalidArgument", "message": str(exc)}), file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
