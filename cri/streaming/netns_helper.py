"""Port-forward's socket maker, run inside a pod's network namespace: `nsenter --net=<pin> -- python -I -S <this>`.

crispd never enters a namespace itself. This helper, started per port-forward session, answers each request on its
stdin (a unix SOCK_SEQPACKET socket: b"4" or b"6") with a new, unconnected TCP socket of that family passed back with
SCM_RIGHTS, or b"error <message>". A socket belongs to the network namespace it was created in, so crispd then
connects it to localhost:<port> and relays it itself: the helper carries no traffic. It exits when crispd closes the
socket. Standard library only.
"""

import os
import socket
import sys


def main() -> int:
    channel = socket.socket(fileno=os.dup(0))
    os.close(0)
    while True:
        try:
            request = channel.recv(64)
        except OSError:
            return 1
        if not request:
            return 0
        family = socket.AF_INET6 if request == b"6" else socket.AF_INET
        try:
            made = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except OSError as exc:
            channel.send(f"error {exc}".encode())
            continue
        try:
            socket.send_fds(channel, [b"ok"], [made.fileno()])
        except OSError:
            return 1
        finally:
            made.close()


if __name__ == "__main__":
    sys.exit(main())
