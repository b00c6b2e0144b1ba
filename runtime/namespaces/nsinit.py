"""Runs inside a pod's freshly unshared namespaces (started by `pin.py` under util-linux `unshare`).

It sets the hostname, brings `lo` up and writes the pod's sysctls, then exits; the namespaces stay alive through
the bind mounts `unshare` made. Standard library only and run as `python -I -S <this file>`: it is on the pod
start path, so it imports as little as possible. Failures: one JSON line on stderr, exit status 1.
"""

from __future__ import annotations

import fcntl
import json
import socket
import struct
import sys

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = "16sH22x"  # struct ifreq: name, flags, padding to 40 bytes


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(_IFREQ, b"lo", 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | IFF_UP))


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    step = ""
    try:
        if request.get("await_maps"):
            # a new user namespace: crispd writes its id maps while we are in it, then says go
            step = "waiting for the user namespace's id maps"
            print("ready", flush=True)
            if sys.stdin.readline().strip() != "go":
                raise OSError(0, "crispd did not map the user namespace")
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
        print(json.dumps({"kind": "InvalidArgument", "message": f"{step}: {exc.strerror}"}), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
