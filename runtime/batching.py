"""Work that concurrent callers ask for, done together: one batch at a time, each caller told its own outcome.

An item that comes while no batch is running starts one at once (a lone caller waits for nothing more); items that
come while one runs wait for it and then go together in the next. This pays for a fixed cost once per batch
instead of once per item (the bridge's veth deletions each wait for the kernel's RCU grace period under the RTNL
lock: a hundred pods stopped at once wait for one). Standard library only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
# the outcome of each item of a batch, in the batch's order: None when it was done, else why not
BatchRunner = Callable[[list[T]], Awaitable[list[BaseException | None]]]


class Batcher(Generic[T]):
    def __init__(self, run: BatchRunner[T], max_items: int = 256) -> None:
        self._run = run
        self._max_items = max_items
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        """Done once the batch that holds `item` is; raises that item's error. A caller that is cancelled does not
        take its item out: the batch does it anyway (batched work is safe to finish unwatched)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._task is None:
            self._task = asyncio.ensure_future(self._drain())
        await asyncio.shield(done)

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:self._max_items], self._waiting[self._max_items:]
                try:
                    outcomes = await self._run([item for item, _ in batch])
                except asyncio.CancelledError:
                    for _, done in batch:
                        done.cancel()
                    raise
                except Exception as exc:
                    outcomes = [exc] * len(batch)
                for (_, done), outcome in zip(batch, outcomes, strict=True):
                    if done.done():
                        continue
                    if outcome is None:
                        done.set_result(None)
                    else:
                        done.set_exception(outcome)
        finally:
            self._task = None
            for _, done in self._waiting:  # cancelled (crispd stops): nobody waits forever
                done.cancel()
            self._waiting = []
