"""Image GC and a container being created from an image: its snapshots are kept from the lookup until its row
counts as a user of them (`ImageManager.kept`), with no moment between the two when the GC sees neither."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import cast

from cri.config import Config
from cri.service.images import ImageManager, ImageRecord, InUse
from cri.store.db import Store

CHAIN_ID = "sha256:" + "ab" * 32


async def _collect_while_a_creation_ends(root: Path) -> Path:
    """A GC that starts while a container is created from the only snapshot (its image already removed), and the
    creation ends (its row counts, its hold goes) while the GC reads the image rows. The snapshot's dir."""
    store = Store(root / "meta.db")
    await store.open()
    rows: list[str] = []  # the containers' lower dirs, as their rows have them
    sampled = asyncio.Event()

    async def in_use() -> InUse:
        sampled.set()
        return InUse(snapshots=frozenset(rows))

    images = ImageManager(Config(root=str(root), state=str(root / "state")), store, in_use=in_use)
    try:
        images.files.prepare()
        fs = images.files.snapshot_fs(CHAIN_ID)
        fs.mkdir(parents=True)
        record = cast(ImageRecord, SimpleNamespace(snapshot_dirs=(str(fs),)))

        async def create() -> None:
            with images.kept() as keep:
                keep(record)
                await sampled.wait()
                rows.append(str(fs))  # the row is written: the container counts in `in_use` from here

        creating = asyncio.create_task(create())
        await asyncio.sleep(0)  # the creation has looked its image up
        await images.gc()
        await creating
        return fs
    finally:
        await images.close()
        await store.close()


def test_a_creation_that_ends_during_a_gc_keeps_its_snapshot(tmp_path: Path) -> None:
    assert asyncio.run(_collect_while_a_creation_ends(tmp_path)).is_dir()
