"""`start` and `state`: the commands a shim runs most, kept to the state dir alone so that they start fast
(no cgroup, seccomp or mount code is imported for them)."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
from pathlib import Path

from runtime import errors
from runtime.executor import hooks
from runtime.executor.state import CREATED, FIFO_FAILED, FIFO_OK, ContainerDir, State, oci_state
from runtime.procs import process_start_time

log = logging.getLogger(__name__)


def start(root: Path, container_id: str) -> None:
    """Open the exec fifo for reading: the init, blocked opening it for writing, runs the startContainer hooks,
    writes its word (OK, or the hooks' error) and execs; then the poststart hooks run here."""
    cdir = ContainerDir(root, container_id)
    with cdir.locked():
        state = cdir.read()
        status = cdir.status(state)
        if status != CREATED:
            raise errors.FailedPrecondition(f"container {container_id} is {status}: only a created "
                                            "container can be started")
        fd = os.open(cdir.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            word = _read_fifo(fd, state)
        finally:
            os.close(fd)
            cdir.fifo.unlink()
        if word.startswith(FIFO_FAILED):
            raise hooks.HookError(f"container {container_id}: {word[1:].decode(errors='replace')}")
        if not word.startswith(FIFO_OK):
            raise errors.FailedPrecondition(f"container {container_id}: init exited before start")
        spec_hooks = hooks.parse_hooks(state.hooks)
        if spec_hooks.get("poststart"):
            _poststart(state, spec_hooks)
    log.info("container %s: started", container_id)


def _read_fifo(fd: int, state: State) -> bytes:
    """The init's word; empty when it died (or closed the fifo) without one."""
    data = b""
    while True:
        readable, _, _ = select.select([fd], [], [], 0.1)
        if readable:
            chunk = os.read(fd, 4096)
            if chunk:
                data += chunk
                if data.startswith(FIFO_OK):
                    return data
                continue
            if data:
                return data  # the init wrote its error and closed the fifo
        if process_start_time(state.pid) != state.pid_start:
            return data


def _poststart(state: State, spec_hooks: hooks.Hooks) -> None:
    """A failing poststart hook fails `start` and kills the container (runtime-spec lifecycle step 9, as runc)."""
    document = hooks.state_document(state.oci_version, state.id, "running", state.bundle, state.annotations,
                                    state.pid)
    try:
        hooks.run_hooks(spec_hooks, "poststart", document, cwd=state.bundle)
    except hooks.HookError:
        with contextlib.suppress(ProcessLookupError):
            if process_start_time(state.pid) == state.pid_start:
                os.kill(state.pid, signal.SIGKILL)
        raise


def state(root: Path, container_id: str) -> dict[str, object]:
    cdir = ContainerDir(root, container_id)
    st = cdir.read()
    return oci_state(st, cdir.status(st))
