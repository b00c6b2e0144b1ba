"""`start` and `state`: the commands a shim runs most, kept to the state dir alone so that they start fast
(no cgroup, seccomp or mount code is imported for them)."""

from __future__ import annotations

import logging
import os
import select
from pathlib import Path

from runtime import errors
from runtime.executor.state import CREATED, ContainerDir, oci_state
from runtime.procs import process_start_time

log = logging.getLogger(__name__)


def start(root: Path, container_id: str) -> None:
    """Open the exec fifo for reading: the init, blocked opening it for writing, writes one byte and execs."""
    cdir = ContainerDir(root, container_id)
    with cdir.locked():
        state = cdir.read()
        status = cdir.status(state)
        if status != CREATED:
            raise errors.FailedPrecondition(f"container {container_id} is {status}: only a created "
                                            "container can be started")
        fd = os.open(cdir.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            while True:
                readable, _, _ = select.select([fd], [], [], 0.1)
                if readable and os.read(fd, 1):
                    break
                if process_start_time(state.pid) != state.pid_start:
                    raise errors.FailedPrecondition(f"container {container_id}: init exited before start")
        finally:
            os.close(fd)
            cdir.fifo.unlink()
    log.info("container %s: started", container_id)


def state(root: Path, container_id: str) -> dict[str, object]:
    cdir = ContainerDir(root, container_id)
    st = cdir.read()
    return oci_state(st, cdir.status(st))
