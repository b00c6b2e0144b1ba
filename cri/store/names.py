"""Name reservations: a pod or container name is held from Run/Create until Remove.

The in-memory index answers at once (names are reserved before any expensive work); every change is also written
to the `name_reservations` table so a restarted crispd knows the names that are taken.
"""

from __future__ import annotations

import sqlite3

from cri.store.db import Store
from runtime import errors


class NameIndex:
    def __init__(self, store: Store, kind: str) -> None:
        self._store = store
        self._kind = kind
        self._holders: dict[str, str] = {}

    async def load(self) -> None:
        rows = await self._store.run(
            lambda c: c.execute("SELECT name, owner_id FROM name_reservations WHERE kind = ?",
                                (self._kind,)).fetchall())
        self._holders = {str(r["name"]): str(r["owner_id"]) for r in rows}

    def holder(self, name: str) -> str | None:
        return self._holders.get(name)

    async def reserve(self, name: str, owner_id: str, now_ns: int) -> None:
        """Take the name for owner_id; ALREADY_EXISTS naming the holder if someone has it."""
        holder = self._holders.get(name)
        if holder is not None and holder != owner_id:
            raise errors.AlreadyExists(f"the {self._kind} name {name!r} is reserved for {holder}")
        self._holders[name] = owner_id  # before the await: a concurrent caller sees it taken

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO name_reservations (name, kind, owner_id, created_at) "
                         "VALUES (?, ?, ?, ?)", (name, self._kind, owner_id, now_ns))

        try:
            await self._store.run(insert)
        except BaseException:
            self._holders.pop(name, None)
            raise

    async def release(self, name: str, owner_id: str) -> None:
        """Give the name back if owner_id holds it (idempotent)."""
        if self._holders.get(name) != owner_id:
            return
        del self._holders[name]
        await self._store.run(lambda c: c.execute(
            "DELETE FROM name_reservations WHERE name = ? AND owner_id = ?", (name, owner_id)))
