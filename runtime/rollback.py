"""Undo steps registered as work proceeds, run in reverse when the work fails (the async ExitStack of crisp).

Unlike contextlib.AsyncExitStack, a failing undo step is logged and never replaces the original error
(`runtime.undo`'s rule), and the undo runs to its end even when the task that does the work is being cancelled (a
cancelled RPC must not leave a half-made pod network behind).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

from runtime.undo import run_undo

log = logging.getLogger(__name__)


class Rollback:
    # undo tasks that outlive a cancelled caller; the loop keeps only weak references to tasks
    _background: set[asyncio.Task[None]] = set()

    def __init__(self, what: str) -> None:
        self.what = what
        self._steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []

    def push(self, description: str, undo: Callable[[], Awaitable[object]]) -> None:
        self._steps.append((description, undo))

    def commit(self) -> None:
        """The work succeeded: forget every undo step."""
        self._steps.clear()

    async def __aenter__(self) -> Rollback:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc is None or not self._steps:
            return
        steps, self._steps = self._steps, []
        task = asyncio.ensure_future(self._undo(steps, exc))
        Rollback._background.add(task)
        task.add_done_callback(Rollback._background.discard)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # cancelled again while undoing: the undo goes on in its task; the caller gets its error now
            log.warning("%s: cancelled while undoing; the undo completes in the background", self.what)

    def _report(self, message: str, exc: BaseException) -> None:
        log.error("%s: %s", self.what, message, exc_info=exc)

    async def _undo(self, steps: list[tuple[str, Callable[[], Awaitable[object]]]], cause: BaseException) -> None:
        log.info("%s failed (%s), undoing %d step(s)", self.what, cause or type(cause).__name__, len(steps))
        for description, undo in reversed(steps):
            await run_undo(description, undo, report=self._report)
