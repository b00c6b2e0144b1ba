"""The streaming requests crisp caches behind a token: what the Exec, Attach and PortForward RPCs asked for.

Nothing of a request is taken from the URL that redeems its token: the token carries the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool

    kind: ClassVar[str] = "exec"


@dataclass(frozen=True)
class AttachRequest:
    container_id: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool

    kind: ClassVar[str] = "attach"


@dataclass(frozen=True)
class PortForwardRequest:
    sandbox_id: str
    ports: tuple[int, ...]    # empty: any port the client names

    kind: ClassVar[str] = "portforward"


StreamRequest = ExecRequest | AttachRequest | PortForwardRequest
