"""The handshake between the executor (parent) and the processes it forks, as small typed messages.

One SOCK_SEQPACKET socketpair carries every message, each one datagram of JSON:
  parent -> stage-1 child   Go            (the child may now join/unshare namespaces; it is in its cgroup)
  stage-1 child -> parent   ChildPid      (the pid of the process that becomes the container's init)
  init -> parent            RunHooks      (create: the filesystem is mounted; run prestart + createRuntime now)
  parent -> init            HooksDone     (they ran: go on to pivot_root)
  init -> parent            Ready         (set up, about to wait for `start` (create) or to exec (exec))
  any child -> parent       Failure       (a typed error: kind + one-line message)
The socket is close-on-exec, so for `exec` the parent learns of a successful execve from end-of-file.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass

from runtime import errors

MAX_MESSAGE = 64 * 1024


@dataclass(frozen=True)
class Go:
    pass


@dataclass(frozen=True)
class ChildPid:
    pid: int


@dataclass(frozen=True)
class RunHooks:
    pass


@dataclass(frozen=True)
class HooksDone:
    pass


@dataclass(frozen=True)
class Ready:
    pass


@dataclass(frozen=True)
class Failure:
    kind: str
    message: str

    def to_error(self) -> Exception:
        return errors.from_kind(self.kind, self.message)


Message = Go | ChildPid | RunHooks | HooksDone | Ready | Failure

_TYPES: dict[str, type[Message]] = {"go": Go, "pid": ChildPid, "hooks": RunHooks, "hooks_done": HooksDone,
                                    "ready": Ready, "error": Failure}
_NAMES = {cls: name for name, cls in _TYPES.items()}

class ProtocolError(errors.CrispError):
    """A message that does not parse: a bug, or a child that died mid-write."""


def encode(message: Message) -> bytes:
    body = {"type": _NAMES[type(message)], **message.__dict__}
    return json.dumps(body).encode()


def decode(data: bytes) -> Message:
    try:
        body = json.loads(data)
        cls = _TYPES[body.pop("type")]
        return cls(**body)
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"bad handshake message {data[:200]!r}: {exc}") from None


def send(sock: socket.socket, message: Message) -> None:
    sock.send(encode(message))


def receive(sock: socket.socket) -> Message | None:
    """The next message, or None at end-of-file (every child end closed)."""
    data = sock.recv(MAX_MESSAGE)
    if not data:
        return None
    return decode(data)


def socketpair() -> tuple[socket.socket, socket.socket]:
    """(parent end, child end); both close-on-exec."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
