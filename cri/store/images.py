"""Image rows of the metadata store (tables `images` and `image_names`, schema v1).

Functions take the store's connection and run on its thread (`Store.run` / `Store.transaction`).
An image row holds the image config JSON and, in `info`, what crisp learned pulling it (manifest digest, blobs,
layers with their chain ids). `image_names` maps every repo tag and repo digest to exactly one image.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ImageRow:
    id: str
    size: int
    config: dict[str, Any]
    info: dict[str, Any]
    created_at: int
    tags: tuple[str, ...]
    digests: tuple[str, ...]


def _row(conn: sqlite3.Connection, row: sqlite3.Row) -> ImageRow:
    names = conn.execute("SELECT name, kind FROM image_names WHERE image_id = ? ORDER BY rowid",
                         (row["id"],)).fetchall()
    return ImageRow(
        id=row["id"], size=row["size"], config=json.loads(row["config"]), info=json.loads(row["info"]),
        created_at=row["created_at"],
        tags=tuple(n["name"] for n in names if n["kind"] == "tag"),
        digests=tuple(n["name"] for n in names if n["kind"] == "digest"),
    )


def put_image(conn: sqlite3.Connection, image_id: str, size: int, config: dict[str, Any], info: dict[str, Any],
              created_at: int, names: list[tuple[str, str]]) -> None:
    """Insert or refresh an image and point its names (name, "tag" | "digest") at it (a moved tag follows)."""
    conn.execute(
        "INSERT INTO images (id, size, config, info, created_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET size = excluded.size, config = excluded.config, info = excluded.info",
        (image_id, size, json.dumps(config, sort_keys=True), json.dumps(info, sort_keys=True), created_at),
    )
    for name, kind in names:
        conn.execute(
            "INSERT INTO image_names (name, kind, image_id) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, image_id = excluded.image_id",
            (name, kind, image_id),
        )


def get_image(conn: sqlite3.Connection, image_id: str) -> ImageRow | None:
    row = conn.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
    return None if row is None else _row(conn, row)


def image_id_by_name(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute("SELECT image_id FROM image_names WHERE name = ?", (name,)).fetchone()
    return None if row is None else str(row["image_id"])


def list_images(conn: sqlite3.Connection) -> list[ImageRow]:
    rows = conn.execute("SELECT * FROM images ORDER BY created_at, id").fetchall()
    return [_row(conn, row) for row in rows]


def delete_image(conn: sqlite3.Connection, image_id: str) -> bool:
    """Remove an image and all its names; False if it was not there."""
    conn.execute("DELETE FROM image_names WHERE image_id = ?", (image_id,))
    return conn.execute("DELETE FROM images WHERE id = ?", (image_id,)).rowcount > 0
