"""`start` with the resident executor, done by the shim itself: no executor command in between.

The executor's own code takes the container's lock, checks that it is created and opens its exec fifo
(runtime.executor.lifecycle.begin_start), says when the init's word is complete (`take_word`) and judges it
(`finish_start`), exactly as `crisp-executor start` does. What differs is who waits for the word: the shim reads it
in its loop, so a start costs no fork of the shim, no command's start-up and no exit. When the loop must not do it
(another command holds the container's lock, or poststart hooks are to run, which block), the shim runs `start` as
a command, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from runtime import errors
from runtime.executor import lifecycle
from shim.loop import Loop, read_available
from shim.protocol import ShimError

# the error that stopped the start, or None once the init has its word
Done = Callable[[ShimError | None], None]


def start_in_loop(loop: Loop, root: str, container_id: str, timeout: float, done: Done) -> bool:
    """Start the created container; `done` is called once the init has its word (or the start failed). False, with
    nothing done, when the loop must not do it: run `start` as a command then. Raises ShimError for a container
    that cannot be started."""
    try:
        starting = lifecycle.begin_start(Path(root), container_id, in_loop=True)
    except (errors.CrispError, OSError) as exc:
        raise _error(container_id, exc) from None
    if starting is None:
        return False
    fd, state = starting.fifo_fd, starting.state
    word = bytearray()
    timer = 0
    over = False  # finished or expired: a retry still due does nothing

    def finish() -> None:
        nonlocal over
        over = True
        loop.forget(fd)
        loop.cancel(timer)
        try:
            lifecycle.finish_start(starting, bytes(word))
        except (errors.CrispError, OSError) as exc:
            done(_error(container_id, exc))
            return
        done(None)

    def readable() -> None:
        chunk = read_available(fd)
        if chunk is None:
            return  # nothing after all: wait until the fifo is readable
        outcome = lifecycle.take_word(word, chunk, state)
        if outcome is lifecycle.Word.COMPLETE:
            finish()
        elif outcome is lifecycle.Word.NO_WRITER:
            loop.forget(fd)  # EOF at once while the fifo has no writer: look again a bit later
            loop.call_later(lifecycle.NO_WRITER_RETRY, retry)

    def retry() -> None:
        if not over:
            loop.add_reader(fd, readable)

    def expired() -> None:
        nonlocal over
        over = True
        loop.forget(fd)
        starting.abandon()
        done(ShimError("DeadlineExceeded", f"{container_id}: the init did not start within {timeout:g}s"))

    timer = loop.call_later(timeout, expired)
    loop.add_reader(fd, readable)
    return True


def _error(container_id: str, exc: BaseException) -> ShimError:
    return ShimError(errors.kind_of(exc), f"{container_id}: start failed: {exc}")
