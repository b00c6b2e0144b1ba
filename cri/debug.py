"""`[debug]` points: named places (runtime/failpoints.py) where crispd fails, pauses or stops on purpose."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from cri.config import DebugConfig
from runtime import errors, failpoints

log = logging.getLogger(__name__)

# what crispd logs when it stops at a hang point: the kill -9 tests wait for this line
HANG_MESSAGE = "debug: stopped at %s until killed"


class DebugPoints:
    def __init__(self, config: DebugConfig) -> None:
        self._config = config

    async def point(self, name: str) -> None:
        """One step is done: fail, pause or stop here if the config names this point."""
        self._fail(name)
        delay = self._config.delay_points.get(name)
        if delay:
            await asyncio.sleep(delay / 1000)
        if name in self._config.hang_points:
            log.warning(HANG_MESSAGE, name)
            await asyncio.Event().wait()

    def point_in_thread(self, name: str) -> None:
        """`point`, in a worker thread (the thread is what stops)."""
        self._fail(name)
        delay = self._config.delay_points.get(name)
        if delay:
            time.sleep(delay / 1000)
        if name in self._config.hang_points:
            log.warning(HANG_MESSAGE, name)
            threading.Event().wait()

    def _fail(self, name: str) -> None:
        failpoints.check(name)
        if name in self._config.fail_points:
            raise errors.CrispError(f"injected failure at {name}")
