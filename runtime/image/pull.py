"""Pull one image: resolve, pick the platform, fetch config and layers concurrently, unpack them into snapshots.

`Puller.pull` runs on the event loop; every network request, hash, write and unpack runs in worker threads (layer
downloads in a pool of `max_concurrent_downloads` threads, each unpacking the layer it fetched). One registry
gets at most `max_concurrent_downloads_per_registry` of those threads and half of the small requests' ones: a
slow or dripping registry holds up its own pulls, never another registry's (pulls wait for a slot on the loop,
not in a pool's queue). A pull that makes no
progress (no bytes downloaded, no tar entry unpacked) for `progress_timeout` seconds is aborted; on any failure
or cancellation the threads are told to stop, waited for, and their temp files removed. Recording the image in the
metadata store is the caller's job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from runtime import errors
from runtime.failpoints import NoPoints, Points
from runtime.fstree import remove_tree
from runtime.image.hosts import registry_hosts
from runtime.image.manifest import (
    INDEX_TYPES,
    OCI_CONFIG,
    chain_ids,
    host_platform,
    max_bytes,
    parse_config,
    parse_manifest,
    select_platform,
)
from runtime.image.reference import Reference
from runtime.image.registry import Credentials, RegistryClient, RepositorySession, Resolved
from runtime.image.store import ImageStore
from runtime.image.unpack import ImageBudget, UnpackLimits, unpack_layer
from runtime.workers import prestart_pool

log = logging.getLogger(__name__)

T = TypeVar("T")
PROGRESS_LOG_SECONDS = 5.0
META_WORKERS = 4


@dataclass(frozen=True)
class LayerInfo:
    digest: str
    size: int
    media_type: str
    diff_id: str
    chain_id: str


@dataclass(frozen=True)
class PulledImage:
    id: str  # sha256:<config digest>
    # the manifest or index the reference resolved to: repo digests are name@resolved_digest
    resolved_digest: str
    resolved_media_type: str
    manifest_digest: str
    config: dict[str, Any]
    layers: tuple[LayerInfo, ...]
    # every blob of the image: index (if any), manifest, config, layers
    blobs: tuple[str, ...]
    size: int
    platform: str

    @property
    def chain_ids(self) -> tuple[str, ...]:
        return tuple(layer.chain_id for layer in self.layers)


class _Progress:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.done = 0
        self.total = 0
        self.last_change = time.monotonic()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            self.last_change = time.monotonic()

    def touch(self) -> None:
        self.last_change = time.monotonic()


HoldFn = Callable[[set[str], set[str]], Awaitable[None]]


@dataclass(frozen=True)
class _Found:
    """What a reference names, before any of it is stored."""

    session: RepositorySession
    resolved: Resolved
    manifest_digest: str
    platform: str
    config_digest: str
    config: dict[str, Any]
    layers: tuple[LayerInfo, ...]
    blobs: dict[str, bytes]  # index (if any), manifest, config


class Puller:
    """Pulls images into an ImageStore; shared by all pulls (threads and connection pools)."""

    def __init__(self, store: ImageStore, client: RegistryClient, hosts_dir: str, max_concurrent_downloads: int,
                 progress_timeout: float, on_fetched: Callable[[int], None] | None = None,
                 max_layer_unpacked: int = 64 << 30, max_image_unpacked: int = 128 << 30,
                 max_downloads_per_registry: int | None = None, points: Points | None = None) -> None:
        self.store = store
        self.points = points or NoPoints()
        self.max_layer_unpacked = max_layer_unpacked
        self.max_image_unpacked = max_image_unpacked
        # told of every chunk of layer bytes downloaded (from a pool thread): crispd's metrics
        self.on_fetched = on_fetched
        self.client = client
        self.hosts_dir = hosts_dir
        self.progress_timeout = progress_timeout
        self._workers = max_concurrent_downloads
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent_downloads, thread_name_prefix="crisp-pull")
        # resolving, manifests, configs, hosts files: small requests, kept out of the layer pool's queue
        self._meta_pool = ThreadPoolExecutor(max_workers=META_WORKERS, thread_name_prefix="crisp-pull-meta")
        self._per_registry = {self._pool: max_downloads_per_registry or max_concurrent_downloads,
                              self._meta_pool: META_WORKERS // 2}
        # (registry, pool) -> its slots; made on the loop
        self._slots: dict[tuple[str, ThreadPoolExecutor], asyncio.Semaphore] = {}

    def prestart(self) -> None:
        """Start every worker thread now (blocking: call it from a worker thread).

        A thread pool starts its threads on demand, and `Thread.start` waits until the new thread runs: on a busy
        host that wait, on the event loop, is a stall. Started here, from a worker, it never happens on the loop.
        """
        prestart_pool(self._pool, self._workers)
        prestart_pool(self._meta_pool, META_WORKERS)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._meta_pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()

    async def pull(self, ref: Reference, credentials: list[Credentials], hold: HoldFn) -> PulledImage:
        """Pull `ref`; `hold(blobs, chain_ids)` is awaited before any blob or snapshot is written or reused."""
        cancel = threading.Event()
        progress = _Progress()
        pending: list[concurrent.futures.Future[Any]] = []

        async def in_thread(fn: Callable[[], T], pool: ThreadPoolExecutor | None = None) -> T:
            pool = pool or self._meta_pool
            key = (ref.domain, pool)
            slots = self._slots.get(key)
            if slots is None:
                slots = self._slots[key] = asyncio.Semaphore(self._per_registry[pool])
            async with slots:
                cf = pool.submit(fn)
                pending.append(cf)
                return await asyncio.wrap_future(cf)

        sessions: list[RepositorySession] = []
        started = time.monotonic()
        watchdog = asyncio.create_task(self._watch(ref, progress, cancel))
        work = asyncio.ensure_future(self._pull(ref, credentials, hold, cancel, progress, in_thread, sessions))
        try:
            done, _ = await asyncio.wait({work, watchdog}, return_when=asyncio.FIRST_COMPLETED)
            if watchdog in done:
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
                watchdog.result()  # raises DeadlineExceeded
            image = work.result()
        except BaseException:
            cancel.set()
            for session in sessions:
                session.abort()
            work.cancel()
            await _settle(work, pending)
            raise
        finally:
            watchdog.cancel()
            with contextlib.suppress(BaseException):
                await watchdog
        seconds = time.monotonic() - started
        log.info("pulled %s as %s (%s, %d layers, %.1f MB fetched) in %.2f s", ref, image.id, image.platform,
                 len(image.layers), progress.done / 1e6, seconds)
        return image

    async def _watch(self, ref: Reference, progress: _Progress, cancel: threading.Event) -> None:
        last_log = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, self.progress_timeout / 4))
            now = time.monotonic()
            if now - progress.last_change > self.progress_timeout:
                cancel.set()
                raise errors.DeadlineExceeded(
                    f"pulling {ref}: no progress for {self.progress_timeout:g} s "
                    f"({progress.done} of {progress.total} bytes); aborted")
            if progress.total and now - last_log >= PROGRESS_LOG_SECONDS:
                last_log = now
                log.info("pulling %s: %.1f of %.1f MB", ref, progress.done / 1e6, progress.total / 1e6)

    async def _pull(self, ref: Reference, credentials: list[Credentials], hold: HoldFn, cancel: threading.Event,
                    progress: _Progress,
                    in_thread: Callable[..., Awaitable[Any]], sessions: list[RepositorySession]) -> PulledImage:
        found: _Found = await in_thread(  # no fail point: reads
            lambda: self._find(ref, credentials, cancel, progress, sessions))
        layers = found.layers
        all_blobs = (*found.blobs, *(layer.digest for layer in layers))
        await hold(set(all_blobs), {layer.chain_id for layer in layers})  # no fail point: leases in crispd's memory
        # everything this image needs is held from here on: GC leaves it alone

        def store_metadata() -> None:
            for digest, body in found.blobs.items():
                self.store.put_blob(digest, body)
            self.points.point_in_thread("pull_image.metadata")

        progress.total = sum(layer.size for layer in layers)
        limits = UnpackLimits(self.max_layer_unpacked, ImageBudget(self.max_image_unpacked))
        # the manifest and config are written while the layers download: neither waits for the other
        jobs = [in_thread(store_metadata),
                *(in_thread(lambda layer=layer: self._fetch_layer(found.session, layer, progress, cancel, limits),
                            self._pool)
                  for layer in layers)]
        await asyncio.gather(*jobs)
        await self.points.point("pull_image.layers")
        size = sum(len(body) for body in found.blobs.values()) + progress.total
        return PulledImage(
            id=found.config_digest, resolved_digest=found.resolved.digest,
            resolved_media_type=found.resolved.media_type, manifest_digest=found.manifest_digest,
            config=found.config, layers=layers, blobs=tuple(all_blobs), size=size, platform=found.platform)

    def _find(self, ref: Reference, credentials: list[Credentials], cancel: threading.Event, progress: _Progress,
              sessions: list[RepositorySession]) -> _Found:
        """What `ref` is (its hosts, the manifest or index it resolves to, the platform's manifest, the config, the
        layers), read in one worker thread: each step needs the one before, and a hop to the loop between them
        cost as much as a request to a registry on loopback."""
        hosts = registry_hosts(self.hosts_dir, ref.domain)
        session = self.client.session(ref, hosts, credentials, cancel)
        sessions.append(session)  # before its first request: an abort from now on cuts them
        resolved = session.resolve()
        progress.touch()
        blobs: dict[str, bytes] = {resolved.digest: resolved.body}
        platform = host_platform()
        if resolved.media_type in INDEX_TYPES:
            chosen = select_platform(resolved.body, resolved.digest, platform)
            manifest = session.fetch_manifest(chosen.digest, chosen.size)
            if manifest.media_type in INDEX_TYPES:
                raise errors.InvalidArgument(f"{ref}: index {chosen.digest} nested in an index is not supported")
            log.info("resolved %s to index %s, %s manifest %s", ref, resolved.digest, chosen.platform,
                     manifest.digest)
            platform_name = str(chosen.platform)
        else:
            manifest = resolved
            log.info("resolved %s to manifest %s", ref, resolved.digest)
            platform_name = str(platform)
        progress.touch()
        blobs[manifest.digest] = manifest.body
        parsed = parse_manifest(manifest.body, manifest.digest)
        config_desc = parsed.config
        config_body = session.fetch_small_blob(config_desc.digest, config_desc.size,
                                               max_bytes(config_desc.media_type or OCI_CONFIG))
        progress.touch()
        config = parse_config(config_body, config_desc.digest, len(parsed.layers))
        os_name = config.get("os")
        if os_name and os_name != "linux":
            raise errors.InvalidArgument(f"{ref}: image {config_desc.digest} is for {os_name}, not linux")
        blobs[config_desc.digest] = config_body
        diff_ids: list[str] = list(config["rootfs"]["diff_ids"])
        layers = tuple(LayerInfo(d.digest, d.size, d.media_type, diff, chain)
                       for d, diff, chain in zip(parsed.layers, diff_ids, chain_ids(diff_ids), strict=True))
        return _Found(session, resolved, manifest.digest, platform_name, config_desc.digest, config, layers, blobs)

    def _fetch_layer(self, session: RepositorySession, layer: LayerInfo, progress: _Progress,
                     cancel: threading.Event, limits: UnpackLimits | None = None) -> None:
        """Download (unless stored) and unpack (unless unpacked) one layer; runs in a pool thread."""
        if cancel.is_set():
            raise errors.Cancelled(f"layer {layer.digest}: pull cancelled")
        if self.store.has_snapshot(layer.chain_id):
            progress.add(layer.size)
            return
        if self.store.has_blob(layer.digest):
            progress.add(layer.size)
        else:
            on_fetched = self.on_fetched

            def fetched(n: int) -> None:
                progress.add(n)
                if on_fetched is not None:
                    on_fetched(n)

            session.fetch_blob(layer.digest, layer.size, lambda: self.store.writer(layer.digest, layer.size),
                               fetched)
            self.points.point_in_thread("pull_image.layer_fetched")
        with errors.writing(f"layer {layer.digest} unpacked into {self.store.tmp_dir}"):
            tmp = self.store.new_tmp_dir("unpack-")
            try:
                fs = tmp / "fs"
                fs.mkdir(mode=0o755)
                result = unpack_layer(self.store.blob_path(layer.digest), fs, layer.digest, layer.diff_id, cancel,
                                      on_entry=lambda _member: progress.touch(), limits=limits)
                self.store.commit_snapshot(layer.chain_id, tmp)
            except BaseException:
                remove_tree(tmp)
                raise
        self.points.point_in_thread("pull_image.layer_unpacked")
        log.debug("unpacked layer %s (%d entries) into snapshot %s", layer.digest, result.entries, layer.chain_id)


async def _settle(work: asyncio.Future[Any], threads: list[concurrent.futures.Future[Any]]) -> None:
    """Wait until the pull's task and every worker thread of it have stopped (they see the cancel flag).

    Never raises, and a second cancellation does not cut the wait short: a thread still writing into tmp/ after the
    pull reported its failure would leave files behind.
    """
    while not work.done():
        try:
            await asyncio.shield(work)
        except BaseException:
            continue
    while any(not f.done() for f in threads):
        try:
            await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            continue
    if not work.cancelled():
        work.exception()  # retrieved: no "never retrieved" warnings
    for f in threads:
        if f.done() and not f.cancelled():
            f.exception()


def image_info(image: PulledImage) -> dict[str, Any]:
    """What the metadata store keeps about a pulled image besides its config (JSON)."""
    return {
        "resolvedDigest": image.resolved_digest,
        "resolvedMediaType": image.resolved_media_type,
        "manifestDigest": image.manifest_digest,
        "platform": image.platform,
        "blobs": list(image.blobs),
        "layers": [
            {"digest": layer.digest, "size": layer.size, "mediaType": layer.media_type, "diffID": layer.diff_id,
             "chainID": layer.chain_id}
            for layer in image.layers
        ],
    }

