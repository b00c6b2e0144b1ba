"""The CRI runtime handlers crispd serves (Kubernetes RuntimeClass): the built-in default "" and the configured
ones, each resolved to its executor (runtime/executor/handlers.py) and probed for what it really does."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from cri.config import RuntimeConfig
from runtime import errors
from runtime.executor import handlers

log = logging.getLogger(__name__)


class RuntimeHandlers:
    def __init__(self, config: RuntimeConfig, state_dir: Path) -> None:
        self._config = config
        self._state_dir = state_dir

    def names(self) -> list[str]:
        """The built-in default "" first, then the configured ones."""
        return ["", *sorted(self._config.handlers)]

    def resolve(self, name: str) -> handlers.Handler:
        """The executor of a CRI runtime_handler (RunPodSandbox, CreateContainer); unknown -> INVALID_ARGUMENT."""
        return handlers.resolve_handler(name, self._config.handlers, self._state_dir)

    async def features(self, name: str) -> handlers.HandlerFeatures:
        """What a handler's executor really does (its `--version`, cached per binary, in a worker thread)."""
        return await asyncio.to_thread(lambda: handlers.handler_features(self.resolve(name)))

    async def probe(self) -> list[tuple[str, handlers.HandlerFeatures]]:
        """Every handler's features; one that cannot be resolved is logged and reported with none."""
        return await asyncio.to_thread(self._probe)

    def _probe(self) -> list[tuple[str, handlers.HandlerFeatures]]:
        out = []
        for name in self.names():
            try:
                features = handlers.handler_features(self.resolve(name))
            except errors.CrispError as exc:
                log.warning("runtime handler %r: %s", name, exc)
                features = handlers.HandlerFeatures()
            out.append((name, features))
        return out
