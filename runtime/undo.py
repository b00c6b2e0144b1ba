"""The one rule for undo steps: a failing undo is reported and never hides the error that is being undone.

`undo_step` wraps a step for `contextlib.ExitStack.callback` (the executor, the network helper); `run_undo`
awaits one (`runtime.rollback.Rollback`, crispd's async stack). Both report the failure (by default a WARNING on
this module's logger; a helper without logging passes its own `report`) and, when given a list, record it so that
the caller can say that its undo was incomplete. Standard library only and no asyncio: the executor imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

# report(message, the exception): how a failed undo step is told
Report = Callable[[str, BaseException], None]


def _warn(message: str, exc: BaseException) -> None:
    log.warning("%s", message)


def _failed(description: str, exc: BaseException, report: Report | None, failures: list[str] | None) -> None:
    (report or _warn)(f"undo step failed: {description}: {exc}", exc)
    if failures is not None:
        failures.append(f"{description}: {exc}")


def undo_step(description: str, fn: Callable[..., object], *args: object, report: Report | None = None,
              failures: list[str] | None = None) -> Callable[[], None]:
    """`fn(*args)` as an undo step that cannot raise: a failure is reported (and appended to `failures`)."""

    def run() -> None:
        try:
            fn(*args)
        except Exception as exc:
            _failed(description, exc, report, failures)

    return run


async def run_undo(description: str, undo: Callable[[], Awaitable[object]], report: Report | None = None,
                   failures: list[str] | None = None) -> bool:
    """Await one undo step; a failure is reported (and appended to `failures`), never raised. Whether it worked."""
    try:
        await undo()
    except Exception as exc:
        _failed(description, exc, report, failures)
        return False
    return True
