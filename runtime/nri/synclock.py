"""The lock between plugin synchronization and container creation (NRI's "BlockPluginSync").

A plugin's Synchronize sends every existing container; a container created meanwhile would be in neither that list
nor the plugin's events. So creations share the lock (many at once) from their CreateContainer event until the
container is in the store, and a synchronization holds it alone: it waits for creations in flight, and new
creations wait for it. A waiting synchronization goes before creations that arrive after it (no starvation).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class SyncLock:
    def __init__(self) -> None:
        self._creations = 0
        self._syncing = False
        self._syncs_waiting = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def creation(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._syncing and not self._syncs_waiting)
            self._creations += 1
        try:
            yield
        finally:
            async with self._changed:
                self._creations -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def synchronization(self) -> AsyncIterator[None]:
        async with self._changed:
            self._syncs_waiting += 1
            try:
                await self._changed.wait_for(lambda: not self._syncing and not self._creations)
            finally:
                self._syncs_waiting -= 1
            self._syncing = True
        try:
            yield
        finally:
            async with self._changed:
                self._syncing = False
                self._changed.notify_all()

    @property
    def syncing(self) -> bool:
        return self._syncing
