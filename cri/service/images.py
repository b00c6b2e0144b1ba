"""crispd's images: pulls, lookups, removal and garbage collection (the API the rest of crispd uses).

For container code (CreateContainer, the OCI spec, status):

    record = await ctx.images.resolve(container_config.image.image)   # by tag, digest, id or short id
    record.id             # "sha256:<config digest>": the container's image_id
    record.image_ref      # the repo digest matching the reference used (the container's image_ref)
    record.config         # the image config JSON (record.config["config"] has User, Env, Entrypoint, Cmd, ...)
    record.snapshot_dirs  # overlayfs lower dirs, topmost first (docs/contracts.md's `lowerdirs` order)
    record.repo_tags, record.repo_digests

`resolve` raises `errors.NotFound`; `find` returns None instead. Images and their snapshots stay on disk while
a container uses them: the `in_use` callback the manager is built with returns `InUse` (image ids and snapshots,
by chain id or lower-dir path, that containers still use); GC never deletes those. Without one, nothing is in use.

Pulls of the same reference (with the same credentials) share one task: a caller that cancels detaches only
itself; the task is cancelled (and its temp files removed) when its last caller is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cri import api as cri
from cri.config import Config
from cri.service.image_index import ImageIndex
from cri.store import images as image_rows
from cri.store.db import Store
from cri.store.images import ImageRow
from runtime import errors
from runtime.failpoints import NoPoints, Points
from runtime.fstree import remove_tree
from runtime.image.gc import GcResult, collect, usage
from runtime.image.pull import PulledImage, Puller, image_info
from runtime.image.reference import Reference, image_id_hex, parse_reference
from runtime.image.registry import Credentials, RegistryClient
from runtime.image.store import ImageStore
from runtime.linux.syscalls import malloc
from runtime.workers import prestart_pool

log = logging.getLogger(__name__)
T = TypeVar("T")

# an id prefix must be this long to name an image: shorter hex is a reference (`a` is docker.io/library/a:latest)
MIN_ID_PREFIX = 12
_SHORT_ID_RE = re.compile(rf"^(?:sha256:)?([a-f0-9]{{{MIN_ID_PREFIX},63}})$")
# ImageFsInfo is polled by the kubelet; walking the store is not free
USAGE_CACHE_SECONDS = 10.0
IMAGE_WORKERS = 2


@dataclass(frozen=True)
class InUse:
    """What containers still use: image ids, and snapshots as chain ids (`sha256:...`) or lower-dir paths."""

    images: frozenset[str] = frozenset()
    snapshots: frozenset[str] = frozenset()


InUseFn = Callable[[], Awaitable[InUse]]


async def _nothing_in_use() -> InUse:
    return InUse()


@dataclass(frozen=True)
class ImageRecord:
    id: str
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    size: int
    config: dict[str, Any]
    chain_ids: tuple[str, ...]  # bottom layer first
    snapshot_dirs: tuple[str, ...]  # topmost first
    image_ref: str
    created_at: int
    info: dict[str, Any] = field(compare=False)

    @property
    def runtime_config(self) -> dict[str, Any]:
        """The image config's `config` object (User, Env, Entrypoint, Cmd, WorkingDir, ...), {} if absent."""
        value = self.config.get("config")
        return value if isinstance(value, dict) else {}


@dataclass
class _PullJob:
    task: asyncio.Task[ImageRecord]
    callers: int = 0


class ImageManager:
    def __init__(self, config: Config, db: Store, clock_ns: Callable[[], int] = time.time_ns,
                 on_fetched: Callable[[int], None] | None = None, in_use: InUseFn = _nothing_in_use,
                 points: Points | None = None) -> None:
        self.config = config.image
        self.db = db
        self.root = Path(config.root) / "images"
        self.files = ImageStore(self.root)
        self.points = points or NoPoints()
        client = RegistryClient(request_timeout=self.config.request_timeout_seconds,
                                # a stalled read outlasts the progress timeout: the pull's watchdog reports it
                                read_timeout=self.config.pull_progress_timeout_seconds
                                + self.config.request_timeout_seconds,
                                max_connections=max(4, self.config.max_concurrent_downloads))
        self.puller = Puller(self.files, client, self.config.registry_config_path,
                             self.config.max_concurrent_downloads, self.config.pull_progress_timeout_seconds,
                             on_fetched=on_fetched, max_layer_unpacked=self.config.max_layer_unpacked_bytes,
                             max_image_unpacked=self.config.max_image_unpacked_bytes,
                             max_downloads_per_registry=self.config.max_concurrent_downloads_per_registry,
                             points=self.points)
        self.clock_ns = clock_ns
        self._pulls: dict[tuple[str, str], _PullJob] = {}
        self._gc_lock = asyncio.Lock()
        self._leases: Counter[str] = Counter()
        # snapshots the last GC kept only because containers use them (no image or pull references them): collected
        # once such a container is gone for good (`released`)
        self._held_by_containers: set[str] = set()
        # snapshots of images containers are being created from, until their rows count in `in_use` (`kept`)
        self._creating: Counter[str] = Counter()
        self._in_use = in_use
        self._usage: tuple[float, int, int] | None = None
        self._deletions: set[asyncio.Future[None]] = set()  # retired snapshot dirs being deleted
        self._index = ImageIndex()  # loaded by start(); lookups read it (cri/service/image_index.py)
        # file work of the image store (prepare, GC, usage); crispd's default executor stays unused
        self._executor = ThreadPoolExecutor(max_workers=IMAGE_WORKERS, thread_name_prefix="crisp-images")
        self._default_credentials = [
            creds for server, auth in sorted(self.config.auths.items())
            if (creds := Credentials.from_auth(auth.username, auth.password, auth.auth, auth.identity_token,
                                               server=server)) is not None
        ]

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def prestart(self) -> None:
        """Start the worker threads; blocking, so call it before the event loop runs (a thread started on the
        loop waits there until it runs, which on a busy host is a stall)."""
        self.puller.prestart()
        prestart_pool(self._executor, IMAGE_WORKERS)

    async def start(self) -> None:
        """Load the image rows, prepare the dirs (throwing away tmp/), then collect what no image references."""
        self._index = ImageIndex(await self.db.run(image_rows.list_images))
        await self._in_thread(self.files.prepare)
        await self.gc()

    async def close(self) -> None:
        for job in list(self._pulls.values()):
            job.task.cancel()
        for job in list(self._pulls.values()):
            with contextlib.suppress(BaseException):
                await job.task
        await asyncio.gather(*self._deletions, return_exceptions=True)
        await self._in_thread(self.puller.close)
        # idle by now; not waited for (a blocking join would stall the loop)
        self._executor.shutdown(wait=False)

    # ------------------------------------------------------------------------------------------------ lookups

    def _record(self, row: ImageRow, image_ref: str | None = None) -> ImageRecord:
        chain_ids = tuple(layer["chainID"] for layer in row.info.get("layers", []))
        return ImageRecord(
            id=row.id, repo_tags=row.tags, repo_digests=row.digests, size=row.size, config=row.config,
            chain_ids=chain_ids,
            snapshot_dirs=tuple(str(self.files.snapshot_fs(c)) for c in reversed(chain_ids)),
            image_ref=image_ref or (row.digests[0] if row.digests else row.id),
            created_at=row.created_at, info=row.info,
        )

    async def find(self, ref: str) -> ImageRecord | None:
        """The image named by a tag, a digest reference, an id or an unambiguous id prefix of at least
        MIN_ID_PREFIX hex digits; None if none. An ambiguous prefix is InvalidArgument naming the candidates."""
        if not ref:
            raise errors.InvalidArgument("no image given")
        parsed: Reference | None = None
        full = image_id_hex(ref)
        if full is None:
            try:
                parsed = parse_reference(ref)
            except errors.InvalidArgument:
                if _SHORT_ID_RE.match(ref) is None:
                    raise
        short = _SHORT_ID_RE.match(ref)
        if full is not None:
            row = self._index.get(f"sha256:{full}")
            return None if row is None else self._record(row)
        if parsed is not None:
            name = parsed.with_digest(parsed.digest) if parsed.digest else parsed.tagged_name
            assert name is not None
            row = self._index.by_name(name)
            if row is not None:
                return self._record(row, _image_ref_for(row, parsed))
        if short is not None:
            image_id = pick_by_prefix(short.group(1), self._index.ids_by_prefix(f"sha256:{short.group(1)}"))
            if image_id is not None:
                row = self._index.get(image_id)
                return None if row is None else self._record(row)
        return None

    async def _write(self, fn: Callable[[Any], T], apply: Callable[[T], None]) -> T:
        """A transaction on the image rows whose result `apply` brings into the index, also if the caller is
        cancelled meanwhile: the transaction goes on in the store's thread regardless."""
        task = asyncio.ensure_future(self.db.transaction(fn))
        # before the caller resumes (callbacks run in the order they were added; shield's comes next)
        task.add_done_callback(lambda t: None if t.cancelled() or t.exception() is not None else apply(t.result()))
        return await asyncio.shield(task)

    async def resolve(self, ref: str) -> ImageRecord:
        record = await self.find(ref)
        if record is None:
            raise errors.NotFound(f"image {ref!r} not found")
        return record

    async def list_images(self) -> list[ImageRecord]:
        return [self._record(row) for row in self._index.rows()]

    # ------------------------------------------------------------------------------------------------ pull

    async def pull(self, image: str, credentials: Credentials | None = None) -> ImageRecord:
        """Pull an image (joining a pull of the same reference already under way); returns its record."""
        ref = parse_reference(image)
        creds = ([credentials] if credentials is not None else []) + self._default_credentials
        key = (str(ref), _fingerprint(creds))
        job = self._pulls.get(key)
        if job is None:
            task = asyncio.create_task(self._pull(ref, creds), name=f"pull {ref}")
            job = _PullJob(task)
            self._pulls[key] = job
            task.add_done_callback(lambda t: self._pull_done(key, t))
        else:
            log.info("joining the pull of %s already under way", ref)
        job.callers += 1
        detached = False
        try:
            return await asyncio.shield(job.task)
        except asyncio.CancelledError:
            job.callers -= 1
            detached = True
            if not job.task.done() and job.callers == 0:
                log.info("pull of %s: its last caller went away, cancelling it", ref)
                job.task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.shield(job.task)  # its cleanup is done before this caller returns
            raise
        finally:
            if not detached:
                job.callers -= 1

    def _pull_done(self, key: tuple[str, str], task: asyncio.Task[ImageRecord]) -> None:
        job = self._pulls.get(key)
        if job is not None and job.task is task:
            del self._pulls[key]
        if not task.cancelled():
            task.exception()  # retrieved even when every caller has gone
        # a pull's buffers (downloads, decompression, hashing) were freed in the pull threads' malloc arena: give
        # them back now, or crispd keeps them resident until some later allocation reuses them
        malloc.trim()

    async def _pull(self, ref: Reference, creds: list[Credentials]) -> ImageRecord:
        held: list[str] = []

        async def hold(blobs: set[str], chain_ids: set[str]) -> None:
            async with self._gc_lock:
                for item in (*blobs, *chain_ids):
                    self._leases[item] += 1
                    held.append(item)

        log.info("pulling %s", ref)
        failed = True
        try:
            pulled = await self.puller.pull(ref, creds, hold)  # no fail point: its steps have theirs
            await self._record_pull(ref, pulled)
            await self.points.point("pull_image.record")
            failed = False
        finally:
            if held:
                async with self._gc_lock:
                    self._leases.subtract(held)
                    self._leases += Counter()  # drop zero counts
                if failed:
                    # what a failed pull stored (blobs, the snapshots of its good layers) is referenced by nothing
                    await asyncio.shield(self._gc_after_failure(ref))  # no fail point: the undo
        self._usage = None
        return await self.resolve(ref.with_digest(pulled.resolved_digest))  # no fail point: a read

    async def _record_pull(self, ref: Reference, pulled: PulledImage) -> None:
        names = [(ref.with_digest(pulled.resolved_digest), "digest")]
        if ref.tag and not ref.digest:
            names.append((f"{ref.name}:{ref.tag}", "tag"))
        created = self.clock_ns()

        def write(conn: Any) -> list[ImageRow]:
            """The images whose rows changed: this one, and those its names leave."""
            left = {image_rows.image_id_by_name(conn, name) for name, _ in names}
            image_rows.put_image(conn, pulled.id, pulled.size, pulled.config, image_info(pulled), created, names)
            changed = (image_rows.get_image(conn, image_id) for image_id in {pulled.id, *left} if image_id)
            return [row for row in changed if row is not None]

        await self._write(write, self._index.update)

    async def _gc_after_failure(self, ref: Reference) -> None:
        try:
            await self.gc()
        except Exception:
            log.exception("pull of %s failed, and so did the GC after it", ref)

    # ------------------------------------------------------------------------------------------------ remove, GC

    async def remove(self, ref: str) -> ImageRecord | None:
        """Remove the image a reference names, with all its names, then collect garbage; None if there was none."""
        record = await self.find(ref)
        if record is None:
            return None

        def delete(conn: Any) -> bool:
            return image_rows.delete_image(conn, record.id)

        if await self._write(delete, lambda gone: self._index.discard(record.id) if gone else None):
            log.info("removed image %s (%s)", record.id, ", ".join(record.repo_tags + record.repo_digests))
        await self.gc(later=True)  # the image's files are out of the store now; its layers' files go after the answer
        return record

    async def gc(self, later: bool = False) -> GcResult:
        """Delete blobs and snapshots that no image, no pull under way and no container references. With `later`,
        the snapshots are taken out of the store (renamed into tmp/) and their files deleted after the return."""
        async with self._gc_lock:
            in_use = await self._in_use()
            # taken with `in_use`, in the same step: a creation that ends while the rows are read has its hold here
            # or its row there (`kept`)
            creating = set(self._creating)
            rows = await self.db.run(image_rows.list_images)
            keep_blobs: set[str] = set(self._leases)
            keep_snapshots: set[str] = set(self._leases)
            for row in rows:
                keep_blobs.update(row.info.get("blobs", []))
                keep_snapshots.update(layer["chainID"] for layer in row.info.get("layers", []))
            held = {_chain_id(snapshot) for snapshot in in_use.snapshots} | creating
            self._held_by_containers = held - keep_snapshots
            keep_snapshots |= held
            result = await self._in_thread(lambda: collect(self.files, keep_blobs, keep_snapshots, later))
        self._usage = None
        if result.retired:
            self._delete_later(result.retired)
        return result

    def _delete_later(self, dirs: Iterable[Path]) -> None:
        """Delete retired snapshot dirs in the image workers; a crash meanwhile leaves them in tmp/, which the next
        start empties."""
        def delete() -> None:
            for d in dirs:
                remove_tree(d)

        deletion = asyncio.get_running_loop().run_in_executor(self._executor, delete)
        self._deletions.add(deletion)

        def done(future: asyncio.Future[None]) -> None:
            self._deletions.discard(future)
            self._usage = None  # the usage measured meanwhile still counted them
            if not future.cancelled() and (exc := future.exception()) is not None:
                log.error("deleting the removed snapshots %s failed: %s", [str(d) for d in dirs], exc)

        deletion.add_done_callback(done)

    @contextlib.contextmanager
    def kept(self) -> Iterator[Callable[[ImageRecord], None]]:
        """While a container is created from images: `keep(record)`, called right after the record's lookup (with no
        await between them, so that the GC of a removal that comes after the lookup sees it), keeps the image's
        snapshots from GC as a container's until the block ends, once the container's row counts in `in_use`.
        The image may be removed meanwhile: its snapshots stay for the container (StartContainer mounts them)."""
        chain_ids: list[str] = []

        def keep(record: ImageRecord) -> None:
            ids = [_chain_id(d) for d in record.snapshot_dirs]
            self._creating.update(ids)
            chain_ids.extend(ids)

        try:
            yield keep
        finally:
            self._creating.subtract(chain_ids)
            self._creating += Counter()  # drop zero counts

    async def released(self, snapshots: Iterable[str]) -> None:
        """A removed container's remains are gone: the snapshots only it kept are collected now."""
        if {_chain_id(snapshot) for snapshot in snapshots} & self._held_by_containers:
            await self.gc()

    async def fs_usage(self) -> tuple[int, int]:
        """Bytes and inodes used by the image store (cached for a few seconds; pulls and removals refresh it)."""
        now = time.monotonic()
        if self._usage is None or now - self._usage[0] > USAGE_CACHE_SECONDS:
            used, inodes = await self._in_thread(lambda: usage(str(self.root)))
            self._usage = (time.monotonic(), used, inodes)
        return self._usage[1], self._usage[2]


def pick_by_prefix(prefix: str, ids: list[str]) -> str | None:
    """The one image id an id prefix names; None for none; InvalidArgument listing them when several."""
    if len(ids) > 1:
        raise errors.InvalidArgument(f"image id prefix {prefix!r} is ambiguous: it names {', '.join(sorted(ids))}")
    return ids[0] if ids else None


def _chain_id(snapshot: str) -> str:
    """A snapshot as containers name it (a chain id, or a snapshot's dir) -> its chain id."""
    return snapshot if snapshot.startswith("sha256:") else _chain_id_of_dir(snapshot)


def _chain_id_of_dir(path: str) -> str:
    """`<root>/images/snapshots/<hex>/fs` (or the snapshot dir itself) -> `sha256:<hex>`."""
    p = Path(path)
    name = p.parent.name if p.name == "fs" else p.name
    return f"sha256:{name}"


def _image_ref_for(row: ImageRow, ref: Reference) -> str:
    """The repo digest to report for an image found by `ref`: the one of the same repository, else the first."""
    if ref.digest:
        return ref.with_digest(ref.digest)
    for digest in row.digests:
        if digest.split("@", 1)[0] == ref.name:
            return digest
    return row.digests[0] if row.digests else row.id


def _fingerprint(creds: list[Credentials]) -> str:
    h = hashlib.sha256()
    for c in creds:
        h.update(repr((c.username, c.password, c.identity_token, c.registry_token, c.server)).encode())
    return h.hexdigest()


def cri_image(record: ImageRecord) -> cri.Image:
    """An image record as a CRI Image; the config's user becomes `uid` (numeric) or `username`, as the CRI asks."""
    image = cri.Image(
        id=record.id,
        repo_tags=list(record.repo_tags),
        repo_digests=list(record.repo_digests),
        size=record.size,
        spec=cri.ImageSpec(image=record.id),
        pinned=False,
    )
    user = str(record.runtime_config.get("User") or "").split(":", 1)[0]
    if user.isdigit():
        image.uid.value = int(user)
    elif user:
        image.username = user
    return image
