"""Creations the kubelet gave up on: RunPodSandbox and CreateContainer run to their end even when their caller goes
away (it cancels, or its deadline passes), and the caller's retry of the same name gets the id that was made,
once, instead of ALREADY_EXISTS (the kubelet retries after a timeout with the same name)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from cri.store.names import NameIndex

log = logging.getLogger(__name__)


def caller_gone(context: Any) -> bool:
    """True when the RPC's caller has given up: it cancelled, or its deadline has passed."""
    if context is None:
        return False
    if context.cancelled():
        return True
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


class Creations:
    def __init__(self) -> None:
        # name -> the id made for it after its caller gave up
        self._abandoned: dict[str, str] = {}

    def abandoned_result(self, names: NameIndex, name: str) -> str | None:
        """The id made for `name` by a creation whose caller gave up, if that is who holds the name (once)."""
        holder = names.holder(name)
        if holder is not None and self._abandoned.get(name) == holder:
            del self._abandoned[name]
            return holder
        return None

    async def run_to_the_end(self, what: str, name: str, object_id: str, work: Coroutine[Any, Any, object],
                             rpc_context: Any) -> None:
        """Run a creation to its end even if its caller goes away; then its result is kept for the caller's
        retry (`abandoned_result`)."""
        task = asyncio.ensure_future(work)

        def keep(t: asyncio.Future[object]) -> None:
            if not t.cancelled() and t.exception() is None:
                log.info("%s %s (%s) finished creating after its caller gave up", what, object_id, name)
                self._abandoned[name] = object_id

        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(keep)
            raise
        if caller_gone(rpc_context):
            keep(task)
