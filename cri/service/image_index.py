"""The image rows crispd answers lookups from: a copy in memory of the store's `images` and `image_names`.

ImageStatus, ListImages and CreateContainer's image lookup read it on the loop, with no trip to the store's thread
(on a busy host each trip waits for a CPU: ImageStatus took 2-4 ms in critest for 0.2 ms of work). The
ImageManager loads it when it starts and keeps it in step after each of the store's image writes (a pull's
record, a removal), with the rows as the write's own transaction left them. The rows' config and info dicts are
shared by every caller: read them, never change them.
"""

from __future__ import annotations

from collections.abc import Iterable

from cri.store.images import ImageRow


class ImageIndex:
    def __init__(self, rows: Iterable[ImageRow] = ()) -> None:
        self._rows: dict[str, ImageRow] = {}
        self._names: dict[str, str] = {}  # repo tag or repo digest -> image id
        self.update(rows)

    def update(self, rows: Iterable[ImageRow]) -> None:
        """These images as the store now has them, names included (a caller passes every image whose names
        changed: the one a name moved to and the ones it left)."""
        for row in rows:
            self.discard(row.id)
            self._rows[row.id] = row
            for name in (*row.tags, *row.digests):
                self._names[name] = row.id

    def discard(self, image_id: str) -> None:
        """The image is gone from the store, with the names that were still its own."""
        row = self._rows.pop(image_id, None)
        if row is None:
            return
        for name in (*row.tags, *row.digests):
            if self._names.get(name) == image_id:
                del self._names[name]

    def get(self, image_id: str) -> ImageRow | None:
        return self._rows.get(image_id)

    def by_name(self, name: str) -> ImageRow | None:
        image_id = self._names.get(name)
        return None if image_id is None else self._rows.get(image_id)

    def ids_by_prefix(self, id_prefix: str) -> list[str]:
        """Ids starting with `id_prefix` (a `sha256:<hex>` prefix)."""
        return sorted(image_id for image_id in self._rows if image_id.startswith(id_prefix))

    def rows(self) -> list[ImageRow]:
        """Every image, oldest first (as the store lists them: by creation time, then id)."""
        return sorted(self._rows.values(), key=lambda row: (row.created_at, row.id))
