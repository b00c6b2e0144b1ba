"""Checkpointing a running container into an archive (CheckpointContainer; KEP-2008, forensic checkpointing).

Whether CRIU can work here is asked once per crispd (`criu check`, in a worker thread) and kept: when it cannot,
every checkpoint is FAILED_PRECONDITION with CRIU's own words. A checkpoint holds the container's lock (no start,
stop, update or removal meanwhile) and dumps its process tree into a staging dir under the state dir, leaving it
running: the built-in executor's containers by crispd's own call of CRIU, an OCI runtime's (runc, crun) by the
runtime's `checkpoint`. Then the metadata and the rootfs diff are added and the archive is written at the requested
location (runtime/checkpoint/archive.py). Whatever fails, the staging dir goes and no archive, partial or whole, is
left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from cri.store.containers import RUNNING, Container
from runtime import bundle, errors
from runtime.checkpoint import archive, criu
from runtime.executor import handlers
from runtime.fstree import remove_tree

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 600.0  # seconds, when the request names none


class Checkpoints:
    def __init__(self, *, state_dir: Path, clock_ns: Callable[[], int]) -> None:
        self._staging_root = state_dir / "checkpoints"
        self._clock_ns = clock_ns
        self._problem: str | None = None
        self._probe = asyncio.Lock()

    async def problem(self) -> str:
        """Why CRIU cannot checkpoint on this host ("" when it can); `criu check` runs once per crispd, and then
        the staging dirs a crispd that died during a checkpoint left are removed."""
        async with self._probe:
            if self._problem is None:  # no checkpoint of this crispd has begun: what is staged is a dead one's
                await asyncio.to_thread(remove_tree, self._staging_root, True)
                self._problem = await asyncio.to_thread(criu.problem)
                if self._problem:
                    log.info("checkpoints are refused on this host: %s", self._problem)
        return self._problem

    async def checkpoint(self, container: Container, handler: handlers.Handler, location: str,
                         time_limit: float, oci_runtime: Sequence[str] = ()) -> None:
        """Dump the running `container` into the archive at `location` (absolute; its directory must exist: else
        InvalidArgument); `time_limit` in seconds, 0 for the default. The built-in executor's containers are
        dumped by crispd's own CRIU call; an OCI runtime's (`oci_runtime`: its command line up to the
        subcommand, as the shim runs it) by its `checkpoint`."""
        _require_running(container)
        reason = await self.problem()
        if reason:
            raise errors.FailedPrecondition(f"CRIU cannot checkpoint on this host: {reason}")
        async with container.lock:
            _require_running(container)
            await asyncio.to_thread(self._checkpoint, container, handler, location,
                                    time_limit if time_limit > 0 else DEFAULT_TIMEOUT, list(oci_runtime))
        log.info("container %s checkpointed into %s", container.id, location)

    def _checkpoint(self, container: Container, handler: handlers.Handler, location: str, timeout: float,
                    oci_runtime: list[str]) -> None:
        if os.path.isdir(location):
            raise errors.InvalidArgument(f"location {location}: is a directory, not an archive's path")
        if not os.path.isdir(os.path.dirname(location)):
            raise errors.InvalidArgument(f"location {location}: its directory does not exist")
        meta = container.meta
        spec = bundle.load_config(meta.bundle)
        linux = spec.get("linux")
        namespaces = criu.namespace_externals(linux.get("namespaces") or [] if isinstance(linux, dict) else [])
        overlay = bundle.overlay_of(spec.get("annotations") or {})
        self._staging_root.mkdir(mode=0o700, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f"{meta.id[:12]}-", dir=self._staging_root)
        try:
            images = Path(staging) / archive.CHECKPOINT_DIR
            images.mkdir()
            if handler.kind == handlers.BUILTIN:
                criu.dump(container.status.pid, str(images), staging, namespaces=namespaces, timeout=timeout)
            else:
                criu.runtime_checkpoint(oci_runtime, meta.id, str(images), staging, timeout=timeout)
            deleted = archive.write_rootfs_diff(overlay.upperdir if overlay else "",
                                                str(Path(staging) / archive.ROOTFS_DIFF))
            config = archive.config_dump(
                container_id=meta.id, name=meta.config.metadata.name, image_name=meta.image_name,
                image_ref=meta.image_ref, runtime=handler.name or handlers.BUILTIN, created_ns=meta.created_at,
                checkpointed_ns=self._clock_ns())
            archive.write_metadata(staging, config=config, spec=spec, deleted=deleted)
            try:
                archive.write_archive(staging, location)
            except OSError as exc:
                raise errors.FailedPrecondition(f"location {location}: the archive cannot be written there: "
                                                f"{exc.strerror or exc}") from None
        finally:
            remove_tree(staging, ignore_errors=True)


def _require_running(container: Container) -> None:
    if container.status.state != RUNNING or container.status.pid <= 0:
        raise errors.FailedPrecondition(f"container {container.id} is {container.status.state}: only a running "
                                        "container can be checkpointed")
