"""`[debug]` points: named places where a test makes creation fail or wait on purpose (failure injection)."""

from __future__ import annotations

import asyncio

from cri.config import DebugConfig
from runtime import errors


class DebugPoints:
    def __init__(self, config: DebugConfig) -> None:
        self._config = config

    def fail(self, name: str) -> None:
        """Raise here if `fail_points` names this place."""
        if name in self._config.fail_points:
            raise errors.CrispError(f"injected failure at {name}")

    async def delay(self, name: str) -> None:
        """Pause here if `delay_points` names this place."""
        delay = self._config.delay_points.get(name)
        if delay:
            await asyncio.sleep(delay / 1000)
