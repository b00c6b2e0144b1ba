"""Creations the kubelet gave up on: RunPodSandbox and CreateContainer run to their end even when their caller goes
away (it cancels, or its deadline passes), and the caller's retry of the same name gets the id that was made,
once, instead of ALREADY_EXISTS (the kubelet retries after a timeout with the same name). A creation that finished
while crispd died before it answered is kept the same way (cri/recovery.py: `keep_for_retry`).

A creation's name reservation carries its intent until the RPC answers (`settle`): what crispd's next start needs
to undo it, or to know that its answer never left."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from cri.store.names import NameIndex

log = logging.getLogger(__name__)

# how long after an answer its creation is settled: the answer is handed to gRPC when the handler returns, and
# leaves some milliseconds later; a crispd killed in between must still keep the creation for the retry
SETTLE_AFTER = 5.0


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
        self._settling: set[asyncio.Future[None]] = set()
        self._waits: set[asyncio.Future[None]] = set()
        self._settle_at_once = False

    def keep_for_retry(self, name: str, object_id: str) -> None:
        """`object_id` was made for `name`, and its caller never got the answer: its retry gets it (once)."""
        self._abandoned[name] = object_id

    async def abandoned_result(self, names: NameIndex, name: str) -> str | None:
        """The id made for `name` by a creation whose caller gave up, if that is who holds the name (once)."""
        holder = names.holder(name)
        if holder is not None and self._abandoned.get(name) == holder:
            del self._abandoned[name]
            await names.settle(name, holder)
            return holder
        return None

    async def run_to_the_end(self, what: str, names: NameIndex, name: str, object_id: str,
                             work: Coroutine[Any, Any, object], rpc_context: Any) -> None:
        """Run a creation to its end even if its caller goes away; then its result is kept for the caller's
        retry (`abandoned_result`). A caller still there is about to be answered: the reservation is settled
        SETTLE_AFTER seconds later, once the answer has left."""
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
            return
        # settled once the answer has surely left: until then a crispd that dies keeps it for the retry (recovery)
        settling = asyncio.ensure_future(self._settle_later(names, name, object_id))
        self._settling.add(settling)
        settling.add_done_callback(self._settling.discard)

    async def _settle_later(self, names: NameIndex, name: str, object_id: str) -> None:
        waited = asyncio.ensure_future(asyncio.sleep(SETTLE_AFTER))
        self._waits.add(waited)
        try:
            await waited
        except asyncio.CancelledError:
            if not self._settle_at_once:
                raise
        finally:
            self._waits.discard(waited)
        try:
            await names.settle(name, object_id)
        except Exception as exc:  # only its retry after a crash is at stake
            log.warning("%s (%s): cannot settle its name: %s", name, object_id, exc)

    async def settle_now(self) -> None:
        """At shutdown, once the server answered everything: settle what waits (a graceful stop loses no answer)."""
        self._settle_at_once = True
        for waited in list(self._waits):
            waited.cancel()
        await asyncio.gather(*self._settling, return_exceptions=True)
