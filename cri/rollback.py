"""Undo steps registered as creation goes, run in reverse when it fails (CRI-O's habit)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

log = logging.getLogger(__name__)


class Rollback:
    """`async with Rollback(what) as undo:` then `undo.push(fn, ...)` after each step; `undo.commit()` at the end.

    If the block raises, every pushed step runs, last first; a failing undo is logged and never hides the original
    error. After `commit()` nothing is undone.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []

    def push(self, description: str, undo: Callable[[], Awaitable[object]]) -> None:
        self._steps.append((description, undo))

    def commit(self) -> None:
        self._steps.clear()

    async def __aenter__(self) -> Rollback:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc is None:
            return
        while self._steps:
            description, undo = self._steps.pop()
            try:
                await undo()
            except BaseException as undo_exc:
                log.error("%s: undoing %s failed: %s", self.what, description, undo_exc, exc_info=undo_exc)
