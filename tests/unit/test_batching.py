"""runtime.batching: concurrent callers' items go together, one batch at a time, each caller with its own outcome."""

from __future__ import annotations

import asyncio

import pytest

from runtime.batching import Batcher


class Recorder:
    def __init__(self, fail: set[str] | None = None, fail_all: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail or set()
        self.fail_all = fail_all
        self.release = asyncio.Event()
        self.release.set()

    async def run(self, items: list[str]) -> list[BaseException | None]:
        self.batches.append(items)
        await self.release.wait()
        if self.fail_all:
            raise RuntimeError("the whole batch failed")
        return [ValueError(item) if item in self.fail else None for item in items]


def test_a_lone_item_goes_at_once_and_the_next_ones_together() -> None:
    async def scenario() -> list[list[str]]:
        rec = Recorder()
        rec.release.clear()
        batcher = Batcher(rec.run)
        first = asyncio.ensure_future(batcher.submit("a"))
        await asyncio.sleep(0.01)
        assert rec.batches == [["a"]]  # nothing in flight: it did not wait for company
        later = [asyncio.ensure_future(batcher.submit(x)) for x in "bcd"]
        await asyncio.sleep(0.01)
        assert rec.batches == [["a"]]  # one batch at a time
        rec.release.set()
        await asyncio.gather(first, *later)
        await batcher.submit("e")  # idle again: alone
        return rec.batches

    assert asyncio.run(scenario()) == [["a"], ["b", "c", "d"], ["e"]]


def test_each_caller_gets_its_own_outcome() -> None:
    async def scenario() -> list[BaseException | None]:
        rec = Recorder(fail={"b"})
        rec.release.clear()
        batcher = Batcher(rec.run)
        blocker = asyncio.ensure_future(batcher.submit("x"))
        await asyncio.sleep(0.01)
        calls = [asyncio.ensure_future(batcher.submit(x)) for x in "abc"]
        rec.release.set()
        await blocker
        return await asyncio.gather(*calls, return_exceptions=True)

    a, b, c = asyncio.run(scenario())
    assert a is None and c is None
    assert isinstance(b, ValueError) and str(b) == "b"


def test_a_failing_batch_fails_each_of_its_callers_and_the_next_batch_runs() -> None:
    async def scenario() -> None:
        rec = Recorder(fail_all=True)
        batcher = Batcher(rec.run)
        results = await asyncio.gather(batcher.submit("a"), batcher.submit("b"), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        rec.fail_all = False
        await batcher.submit("c")
        assert rec.batches[-1] == ["c"]

    asyncio.run(scenario())


def test_a_cancelled_caller_leaves_its_item_in_the_batch() -> None:
    async def scenario() -> list[list[str]]:
        rec = Recorder()
        rec.release.clear()
        batcher = Batcher(rec.run)
        blocker = asyncio.ensure_future(batcher.submit("x"))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher.submit("a"))
        await asyncio.sleep(0.01)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        rec.release.set()
        await blocker
        await asyncio.sleep(0.01)
        return rec.batches

    assert asyncio.run(scenario()) == [["x"], ["a"]]


def test_batches_hold_at_most_max_items() -> None:
    async def scenario() -> list[list[str]]:
        rec = Recorder()
        rec.release.clear()
        batcher = Batcher(rec.run, max_items=2)
        calls = [asyncio.ensure_future(batcher.submit(x)) for x in "abcde"]
        await asyncio.sleep(0.01)
        rec.release.set()
        await asyncio.gather(*calls)
        return rec.batches

    assert asyncio.run(scenario()) == [["a", "b"], ["c", "d"], ["e"]]
