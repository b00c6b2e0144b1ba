"""The one rule for undo steps: a failing step is reported (and recorded) and never raises."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from runtime.undo import run_undo, undo_step


def _boom() -> None:
    raise OSError("device busy")


def test_a_failing_undo_step_is_reported_and_the_original_error_kept() -> None:
    failures: list[str] = []
    told: list[str] = []
    ran: list[str] = []
    with pytest.raises(ValueError, match="the work failed"), contextlib.ExitStack() as undo:
        undo.callback(undo_step("first", ran.append, "first"))
        undo.callback(undo_step("unmount x", _boom, report=lambda m, e: told.append(m), failures=failures))
        raise ValueError("the work failed")
    assert ran == ["first"]  # the steps after the failing one still ran
    assert failures == ["unmount x: device busy"]
    assert told == ["undo step failed: unmount x: device busy"]


def test_async_undo_step_reports_instead_of_raising(caplog: pytest.LogCaptureFixture) -> None:
    async def fail() -> None:
        raise OSError("gone")

    async def fine() -> None:
        pass

    assert asyncio.run(run_undo("remove y", fine)) is True
    assert asyncio.run(run_undo("remove y", fail)) is False
    assert "undo step failed: remove y: gone" in caplog.text
