"""A container's state under the executor's --root: `<root>/<id>/state.json` and the exec fifo.

The status is never stored: it is read from the kernel each time (is the init alive, is it still the same process
(its start time), is the exec fifo still there), as runc does.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.procs import process_start_time

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
STATE_FILE = "state.json"
FIFO = "exec.fifo"
# what the init writes into the exec fifo once `start` opened it: OK, or FAILED followed by the error (a
# startContainer hook failed; the init exits)
FIFO_OK = b"0"
FIFO_FAILED = b"E"

CREATING, CREATED, RUNNING, STOPPED = "creating", "created", "running", "stopped"


def check_id(container_id: str) -> None:
    if not ID_PATTERN.match(container_id) or container_id in (".", ".."):
        raise errors.InvalidArgument(f"invalid container id {container_id!r}")


@dataclass(frozen=True)
class State:
    id: str
    bundle: str
    rootfs: str = ""
    pid: int = 0
    pid_start: int = 0
    created: str = ""
    cgroup: str = ""
    oci_version: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    # what `exec` needs of the spec: its seccomp profile and namespace list, as written in config.json
    linux: Mapping[str, Any] = field(default_factory=dict)
    # the spec's hooks as written in config.json (start and delete run poststart and poststop from here)
    hooks: Mapping[str, Any] = field(default_factory=dict)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


class ContainerDir:
    """`<root>/<id>`: made by create, locked by every command that changes the container, removed by delete."""

    def __init__(self, root: Path, container_id: str) -> None:
        check_id(container_id)
        self.id = container_id
        self.path = root / container_id

    @property
    def fifo(self) -> Path:
        return self.path / FIFO

    def exists(self) -> bool:
        return (self.path / STATE_FILE).exists() or self.path.is_dir()

    def make(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.path.mkdir(mode=0o711)
        except FileExistsError:
            raise errors.AlreadyExists(f"container {self.id} already exists") from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[int]:
        """Hold the container's lock; yields the lock's fd, which a forked child must close (or it keeps the
        lock held for as long as it lives)."""
        fd = self.lock()
        try:
            yield fd
        finally:
            os.close(fd)

    def lock(self, wait: bool = True) -> int:
        """Take the container's lock: the fd that holds it (closing it releases it); -1 if `wait` is False and
        another process holds it."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise errors.NotFound(f"container {self.id} does not exist") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return -1
        except BaseException:
            os.close(fd)
            raise
        return fd

    def write(self, state: State) -> None:
        tmp = self.path / (STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / STATE_FILE)

    def read(self) -> State:
        try:
            data = json.loads((self.path / STATE_FILE).read_text())
        except FileNotFoundError:
            raise errors.NotFound(f"container {self.id} does not exist") from None
        return State(**data)

    def status(self, state: State) -> str:
        if not state.pid:
            return CREATING
        start = process_start_time(state.pid)
        if start is None or start != state.pid_start:
            return STOPPED
        return CREATED if self.fifo.exists() else RUNNING

    def remove(self) -> None:
        for name in (STATE_FILE, STATE_FILE + ".tmp", FIFO):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        with contextlib.suppress(FileNotFoundError):
            self.path.rmdir()


def oci_state(state: State, status: str) -> dict[str, Any]:
    """The `state` command's JSON, as runc prints it."""
    return {
        "ociVersion": state.oci_version or "1.0.2",
        "id": state.id,
        "pid": state.pid if status in (CREATED, RUNNING) else 0,
        "status": status,
        "bundle": state.bundle,
        "rootfs": state.rootfs,
        "created": state.created,
        "annotations": dict(state.annotations),
        "owner": "",
    }
