"""What crispd does at start, before it serves: rebuild its caches from the store and reconcile with reality.

Records are the truth for what finished: a pod or container row is written last, so one without a row did not
finish. Such a creation (a name reserved without a row, or dirs nobody refers to, left by a crispd that was
killed) is undone with the steps its RPC's own undo uses (the controllers' `undo_unfinished`), from the intent
its name reservation kept, and its name is free again: the kubelet's retry then makes it anew. A removal whose
cleanup did not finish (RemoveContainer answers before it) is finished the same way, from its journal entry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from cri.lifecycle.containers import ContainerRemains
from cri.service.context import ServiceContext
from cri.store.containers import EXITED, RUNNING
from cri.store.names import Reservation
from cri.store.sandboxes import NOT_READY, READY
from runtime import errors
from runtime.network.types import PodNetworkRequest
from shim.protocol import ExitStatus

log = logging.getLogger(__name__)

# unfinished creations undone at once (each waits mostly on a shim, the executor's delete, mounts, the network)
UNDO_CONCURRENCY = 8


async def _each(ids: set[str], undo: Callable[[str], Awaitable[None]]) -> None:
    """undo(id) for every id, UNDO_CONCURRENCY at a time."""
    limit = asyncio.Semaphore(UNDO_CONCURRENCY)

    async def one(object_id: str) -> None:
        async with limit:
            await undo(object_id)

    await asyncio.gather(*(one(object_id) for object_id in sorted(ids)))


async def recover_containers(ctx: ServiceContext) -> None:
    """Reconnect to every live shim; a container whose process is gone gets its real exit status (from the
    shim's status file) or, if nothing is known, exit code 255 with a reason. A container not made yet stays
    CREATED, with or without its shim. Shims of containers without a record are left to
    `undo_unfinished_containers`."""
    await ctx.container_names.load()
    containers = {c.id: c for c in await ctx.containers.load()}
    found = {shim.id: shim for shim in await ctx.shims.recover()}
    for container in containers.values():
        if container.status.state == EXITED or container.unmade:
            # an unmade container is made by StartContainer, with its shim as it finds it (a new one, one that
            # created it before a crispd was killed, or none: it spawns one)
            continue
        recovered = found.get(container.id)
        if recovered is not None and recovered.client is not None:
            state = await recovered.client.state()
            if state.status is not None:
                await ctx.container_control.record_exit(container, state.status)
            elif container.status.state == RUNNING or state.state == "running":
                if container.status.state != RUNNING:
                    await ctx.containers.update(container, state=RUNNING, started_at=state.started_at)
                ctx.container_control.watch(container)
            continue
        status = recovered.status if recovered is not None else None
        if status is None:
            status = ExitStatus(exit_code=255, reason="Unknown",
                                message="the container's shim is gone and left no exit status")
        await ctx.container_control.record_exit(container, status)
    log.info("recovered %d containers (%d with a live shim)", len(containers),
             sum(1 for s in found.values() if s.client is not None))


def _dir_names(*parents: Path) -> set[str]:
    names: set[str] = set()
    for parent in parents:
        try:
            names.update(entry.name for entry in parent.iterdir() if entry.is_dir())
        except FileNotFoundError:
            pass
    return names


def _unanswered(ctx: ServiceContext, reservations: list[Reservation], known: set[str]) -> None:
    """Creations that finished (their record is there) but whose reservation was never settled: crispd died
    before it answered, so the caller's retry of the same name gets the id (once)."""
    for reservation in reservations:
        if reservation.owner_id in known and reservation.intent:
            log.info("%s: created as %s, but crispd died before it answered; kept for the retry",
                     reservation.name, reservation.owner_id)
            ctx.creations.keep_for_retry(reservation.name, reservation.owner_id)


async def undo_unfinished_containers(ctx: ServiceContext) -> None:
    """Every container creation without a record (a reserved name, a bundle, a writable layer) is undone, and
    every removal whose cleanup did not finish (its journal entry) is finished the same way."""
    known = {c.id for c in ctx.containers.all()}
    bundles, layers = ctx.state_dir / "containers", ctx.root_dir / "containers"
    all_reservations = await ctx.container_names.reservations()
    _unanswered(ctx, all_reservations, known)
    reservations = {r.owner_id: r for r in all_reservations if r.owner_id not in known}
    removals = {r.id: r for r in await ctx.containers.removals()}
    leftovers = (set(reservations) | set(removals) | await asyncio.to_thread(_dir_names, bundles, layers)) - known

    async def undo(container_id: str) -> None:
        reservation = reservations.get(container_id)
        removal = removals.get(container_id)
        intent = reservation.intent if reservation is not None else {}
        shim = ctx.shims.info(container_id)
        cgroup = intent.get("cgroup") or (shim.config.cgroup if shim is not None and shim.config.cgroup else None)
        remains = ContainerRemains(bundle=Path(intent.get("bundle") or bundles / container_id),
                                   container_dir=Path(intent.get("container_dir") or layers / container_id),
                                   cgroup=cgroup)
        if removal is not None:
            remains = ContainerRemains.from_json(removal.remains)
        try:
            await ctx.container_control.undo_unfinished(
                container_id, reservation.name if reservation is not None else "", remains)
            if removal is not None:
                await ctx.containers.removal_done(container_id)
        except errors.CrispError as exc:
            # its bundle, its reservation or journal entry are the record of what is left: kept for the next start
            log.warning("container %s: cannot undo its unfinished creation or removal yet: %s", container_id, exc)

    await _each(leftovers, undo)


async def undo_unfinished_pods(ctx: ServiceContext) -> None:
    """Every pod creation without a record (a reserved name, a pod dir) is undone."""
    known = {s.id for s in ctx.sandboxes.all()}
    all_reservations = await ctx.sandbox_names.reservations()
    _unanswered(ctx, all_reservations, known)
    reservations = {r.owner_id: r for r in all_reservations if r.owner_id not in known}
    leftovers = (set(reservations) | await asyncio.to_thread(_dir_names, ctx.state_dir / "sandboxes")) - known

    async def undo(sandbox_id: str) -> None:
        reservation = reservations.get(sandbox_id)
        try:
            await ctx.sandbox_control.undo_unfinished(
                sandbox_id, reservation.name if reservation is not None else "",
                reservation.intent if reservation is not None else {})
        except errors.CrispError as exc:
            log.warning("pod %s: cannot undo its unfinished creation yet: %s", sandbox_id, exc)

    await _each(leftovers, undo)


async def recover(ctx: ServiceContext) -> None:
    await ctx.sandbox_names.load()
    for sandbox in await ctx.sandboxes.load():
        ref = sandbox.status.pod_init_ref()
        if sandbox.status.state == READY and ref is not None and not ref.alive():
            # its PID namespace died with its init (a reboot, or someone killed it): the pod is not ready
            log.warning("pod %s: its init (pid %d) is gone; marking the pod not ready", sandbox.id, ref.pid)
            await ctx.sandboxes.update(sandbox, state=NOT_READY)
    await recover_containers(ctx)
    await undo_unfinished_containers(ctx)
    await undo_unfinished_pods(ctx)
    if ctx.network is not None:
        known = {s.id for s in ctx.sandboxes.all()}
        for sandbox_id in await ctx.network.attached_sandboxes() - known:
            # a pod whose record is gone (it was removed while its network teardown failed): give back what
            # it holds
            log.info("pod %s: removing its leftover network attachment", sandbox_id)
            await ctx.network.teardown(PodNetworkRequest(sandbox_id=sandbox_id, netns=""))
    log.info("recovered %d pods", len(ctx.sandboxes.all()))
