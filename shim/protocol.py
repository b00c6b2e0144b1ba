"""The shim's wire formats, shared by the shim (stdlib only) and crispd's client and manager.

Control socket: one JSON object per line. A request is `{"v": 1, "op": "...", ...}`; a reply is
`{"v": 1, "ok": true, ...}` or `{"v": 1, "ok": false, "error": {"kind": "NotFound", "message": "..."}}`.
After a successful `attach` or `exec` reply the connection carries binary frames instead (see `FRAME_HEADER`).

Files in the container's state dir (its bundle dir): `shim.sock` (control socket), `shim.json` (the shim's
config, pid and start time, written when it is ready), `status.json` (the exit status, written atomically
before the exit is reported), `shim.log` (the shim's own diagnostics).

This module must stay importable by the shim: standard library only, nothing heavy.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

from runtime import errors

PROTOCOL_VERSION = 1

SOCKET_NAME = "shim.sock"
INFO_NAME = "shim.json"
STATUS_NAME = "status.json"
SHIM_LOG_NAME = "shim.log"

# the error kinds a shim reports: runtime.errors' wire names
ERROR_KINDS = (*errors.KINDS, errors.INTERNAL)

# binary frames after attach/exec: 1 byte stream, 4 bytes big-endian length, payload
FRAME_HEADER = struct.Struct(">BI")
STREAM_STDIN = 0    # client -> shim; an empty payload closes stdin
STREAM_STDOUT = 1   # shim -> client
STREAM_STDERR = 2   # shim -> client
STREAM_RESIZE = 3   # client -> shim; JSON {"width": W, "height": H}
STREAM_EXIT = 4     # shim -> client, last frame: JSON exit status of the exec, or of the container for attach
STREAM_ERROR = 5    # shim -> client, last frame: JSON {"kind", "message"}
MAX_FRAME = 1 << 20

DEFAULT_LOG_MAX_LINE = 16 * 1024
# an attacher that falls this far behind is disconnected rather than slowing the container or the log
MAX_ATTACH_BACKLOG = 4 * 1024 * 1024
# ExecSync's combined output is cut below the kubelet's 16 MiB message limit
MAX_EXEC_SYNC_OUTPUT = 16 * 1024 * 1024 - 64 * 1024


class ShimError(Exception):
    """A typed failure inside the shim; `kind` is one of ERROR_KINDS."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind if kind in ERROR_KINDS else "Internal"
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}

    def reply(self) -> dict[str, Any]:
        return reply_error(self.kind, self.message)


@dataclass(frozen=True)
class ShimConfig:
    """What crispd tells a new shim; written back into shim.json so a later crispd can find it again."""

    id: str
    bundle: str                      # the container's bundle = state dir (config.json, socket, status)
    executor: list[str]              # argv prefix of the OCI runtime: ["runc"], ["/usr/bin/crun"], [crisp-executor]
    executor_root: str               # the executor's --root
    # > 0: the executor is crisp's own and runs in a fork of the shim (shim/executor.py): executor[:resident] is
    # its program (what crispd runs when no shim is left, what messages name), executor[resident:] its arguments
    resident: int = 0
    log_path: str = ""               # the CRI log file; empty: output is drained and discarded
    log_max_line: int = DEFAULT_LOG_MAX_LINE
    stdin: bool = False              # keep the container's stdin open for attach
    stdin_once: bool = False         # close the container's stdin when the first attach session ends
    mount_rootfs: bool = False       # mount the io.crisp.rootfs.overlay annotation on root.path (runc, crun)
    cgroup2_mount: str = ""          # where cgroup v2 is mounted
    cgroup: str = ""                 # the container's cgroup under it (its memory.events counts OOM kills)
    # non-empty: run the executor in a private mount namespace with this cgroup2 mount bound on /sys/fs/cgroup
    # (an OCI runtime on a hybrid host would otherwise use the host's cgroup v1 hierarchies)
    cgroup2_bind: str = ""
    # fail points (runtime/failpoints.py, "shim.*") where the shim stops until it is killed: the shim kill tests
    hang_points: list[str] = field(default_factory=list)
    # non-empty (both): once the container runs, the shim execs this crisp-monitor (shim/monitor/monitor.c), which
    # hands the ops it does not serve to delegates that crispd's zygote forks on a request to zygote_socket
    monitor: str = ""
    zygote_socket: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShimConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ShimError("InvalidArgument", f"unknown shim config keys {sorted(unknown)}")
        try:
            config = cls(**data)
        except TypeError as exc:
            raise ShimError("InvalidArgument", f"bad shim config: {exc}") from None
        config.check()
        return config

    def check(self) -> None:
        if not self.id or "/" in self.id or self.id in (".", ".."):
            raise ShimError("InvalidArgument", f"bad container id {self.id!r}")
        if not os.path.isabs(self.bundle):
            raise ShimError("InvalidArgument", f"{self.id}: bundle must be an absolute path, got {self.bundle!r}")
        if not self.executor or not all(isinstance(a, str) and a for a in self.executor):
            raise ShimError("InvalidArgument", f"{self.id}: executor must be a non-empty argv list")
        if isinstance(self.resident, bool) or not 0 <= self.resident <= len(self.executor):
            raise ShimError("InvalidArgument", f"{self.id}: resident must name 0 to {len(self.executor)} words")
        if self.log_path and not os.path.isabs(self.log_path):
            raise ShimError("InvalidArgument", f"{self.id}: log path must be absolute, got {self.log_path!r}")
        for name in ("monitor", "zygote_socket"):
            if getattr(self, name) and not os.path.isabs(getattr(self, name)):
                raise ShimError("InvalidArgument", f"{self.id}: {name} must be an absolute path")
        if self.log_max_line < 64:
            raise ShimError("InvalidArgument", f"{self.id}: log_max_line must be at least 64")


@dataclass(frozen=True)
class ExitStatus:
    """How a container (or an exec) ended. Times are nanoseconds since the epoch; 0 = never."""

    exit_code: int                   # 128 + signal when killed by a signal
    signal: int = 0                  # the killing signal, 0 when it exited
    started_at: int = 0
    finished_at: int = 0
    oom_killed: bool = False
    # why crisp does not know better: "" normally; e.g. "ShimDied" when the shim vanished without a status
    reason: str = ""
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExitStatus:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class StatusFile:
    """status.json: the container's exit status plus the pid it had."""

    id: str
    pid: int
    status: ExitStatus
    version: int = PROTOCOL_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


def wait_status_to_exit(status: int) -> tuple[int, int]:
    """A waitpid status as (exit code, signal): 128 + signal when killed by one."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), 0
    return 255, 0


def write_file_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write temp + fsync + rename + fsync(dir): a reader sees the old file or the whole new one."""
    directory = os.path.dirname(path) or "."
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_status_file(path: str, container_id: str, pid: int, status: ExitStatus) -> None:
    body = {"version": PROTOCOL_VERSION, "id": container_id, "pid": pid, **status.to_json()}
    write_file_atomic(path, (json.dumps(body, sort_keys=True) + "\n").encode())


def read_status_file(path: str) -> ExitStatus | None:
    """The exit status in a status file; None when there is none (the container has not exited)."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ShimError("Internal", f"unreadable status file {path}: {exc}") from None
    if not isinstance(data, dict) or "exit_code" not in data:
        raise ShimError("Internal", f"status file {path} has no exit code")
    return ExitStatus.from_json(data)


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def request(op: str, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "op": op, **fields}


def reply_ok(**fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": True, **fields}


def reply_error(kind: str, message: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": False, "error": {"kind": kind, "message": message}}


def frame(stream: int, payload: bytes) -> bytes:
    return FRAME_HEADER.pack(stream, len(payload)) + payload

