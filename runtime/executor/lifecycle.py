"""`start` and `state`: the commands a shim runs most, kept to the state dir alone so that they start fast
(no cgroup, seccomp or mount code is imported for them)."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import select
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from runtime import errors
from runtime.executor import hooks
from runtime.executor.state import CREATED, FIFO_FAILED, FIFO_OK, ContainerDir, State, oci_state
from runtime.procs import process_start_time

log = logging.getLogger(__name__)

# EOF with nothing read while the init lives (Word.NO_WRITER): the fifo has no writer now, and reads EOF at once
# (once a writer came and went) until the init has it open: look again this much later, rather than spin
NO_WRITER_RETRY = 0.001


def start(root: Path, container_id: str) -> None:
    """Open the exec fifo for reading: the init, blocked opening it for writing, runs the startContainer hooks,
    writes its word (OK, or the hooks' error) and execs; then the poststart hooks run here."""
    starting = begin_start(root, container_id)
    assert starting is not None
    try:
        word = read_fifo(starting.fifo_fd, starting.state)
    except BaseException:
        starting.abandon()
        raise
    finish_start(starting, word)


@dataclass
class Starting:
    """A start under way (`begin_start`): the container's lock held (`lock_fd`), its exec fifo open for reading
    (`fifo_fd`, non-blocking), which let the init go on; `finish_start` (or `abandon`) releases both."""

    cdir: ContainerDir
    state: State
    lock_fd: int
    fifo_fd: int

    def abandon(self) -> None:
        """Close the fifo (it goes) and release the lock."""
        try:
            os.close(self.fifo_fd)
            self.cdir.fifo.unlink()
        finally:
            os.close(self.lock_fd)


def begin_start(root: Path, container_id: str, in_loop: bool = False) -> Starting | None:
    """Lock the container, check that it is created and open its exec fifo. `in_loop` (a caller that must not
    block: the shim): None, with nothing done, when another command holds the lock or poststart hooks are to run
    (the caller then runs `start` as a command)."""
    cdir = ContainerDir(root, container_id)
    lock_fd = cdir.lock(wait=not in_loop)
    if lock_fd < 0:
        return None
    try:
        state = cdir.read()
        status = cdir.status(state)
        if status != CREATED:
            raise errors.FailedPrecondition(f"container {container_id} is {status}: only a created "
                                            "container can be started")
        if in_loop and hooks.parse_hooks(state.hooks).get("poststart"):
            os.close(lock_fd)
            return None
        fd = os.open(cdir.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except BaseException:
        os.close(lock_fd)
        raise
    return Starting(cdir, state, lock_fd, fd)


def finish_start(starting: Starting, word: bytes) -> None:
    """The init's word read from the fifo (empty: it died, or closed the fifo, without one): the fifo goes, and
    the start fails or its poststart hooks run; the lock is released either way."""
    container_id, state = starting.cdir.id, starting.state
    try:
        try:
            os.close(starting.fifo_fd)
        finally:
            starting.cdir.fifo.unlink()
        if word.startswith(FIFO_FAILED):
            raise hooks.HookError(f"container {container_id}: {word[1:].decode(errors='replace')}")
        if not word.startswith(FIFO_OK):
            raise errors.FailedPrecondition(f"container {container_id}: init exited before start")
        spec_hooks = hooks.parse_hooks(state.hooks)
        if spec_hooks.get("poststart"):
            _poststart(state, spec_hooks)
    finally:
        os.close(starting.lock_fd)
    log.info("container %s: started", container_id)


class Word(enum.Enum):
    """Where the init's word stands after a look at the exec fifo (`take_word`)."""

    COMPLETE = "complete"  # read it: `finish_start` judges it (empty: the init died without one)
    MORE = "need more"  # wait until the fifo is readable again
    NO_WRITER = "no writer yet"  # EOF while the init lives: no writer has the fifo open, look again a bit later


def take_word(word: bytearray, chunk: bytes | None, state: State) -> Word:
    """The one rule for when the init's word is complete, for each look at its exec fifo: `chunk` is what one read
    gave (added to `word`), b"" at EOF, None when there was nothing to read. The word is complete once it starts
    with OK; at EOF after some bytes (the init wrote its error and closed the fifo); or, with whatever was read,
    when the init died. EOF with nothing read while the init lives: no writer yet."""
    if chunk:
        word.extend(chunk)
        return Word.COMPLETE if word.startswith(FIFO_OK) else Word.MORE
    if chunk is not None and word:
        return Word.COMPLETE
    if process_start_time(state.pid) != state.pid_start:
        return Word.COMPLETE
    return Word.MORE if chunk is None else Word.NO_WRITER


def read_fifo(fd: int, state: State) -> bytes:
    """The init's word; empty when it died (or closed the fifo) without one."""
    word = bytearray()
    while True:
        readable, _, _ = select.select([fd], [], [], 0.1)
        outcome = take_word(word, os.read(fd, 4096) if readable else None, state)
        if outcome is Word.COMPLETE:
            return bytes(word)
        if outcome is Word.NO_WRITER:
            time.sleep(NO_WRITER_RETRY)


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
