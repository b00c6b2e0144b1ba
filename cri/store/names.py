"""Name reservations: a pod or container name is held from Run/Create until Remove.

The in-memory index answers at once (names are reserved before any expensive work); every change is also written
to the `name_reservations` table so a restarted crispd knows the names that are taken. A reservation keeps the
creation's intent (what it is about to make, as JSON): a holder without a finished record at crispd's start is a
creation that did not finish, and the intent is what undoing it needs.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from cri.store.db import Store
from runtime import errors


@dataclass(frozen=True)
class Reservation:
    name: str
    owner_id: str
    intent: dict[str, Any] = field(default_factory=dict)


class NameIndex:
    def __init__(self, store: Store, kind: str) -> None:
        self._store = store
        self._kind = kind
        self._holders: dict[str, str] = {}

    async def load(self) -> None:
        self._holders = {r.name: r.owner_id for r in await self.reservations()}

    async def reservations(self) -> list[Reservation]:
        """Every name of this kind that is held, with its creation's intent, as the database has them."""
        rows = await self._store.run(
            lambda c: c.execute("SELECT name, owner_id, intent FROM name_reservations WHERE kind = ?",
                                (self._kind,)).fetchall())
        return [Reservation(str(r["name"]), str(r["owner_id"]), json.loads(r["intent"] or "{}")) for r in rows]

    def holder(self, name: str) -> str | None:
        return self._holders.get(name)

    async def reserve(self, name: str, owner_id: str, now_ns: int, intent: dict[str, Any] | None = None) -> None:
        """Take the name for owner_id; ALREADY_EXISTS naming the holder if someone has it."""
        holder = self._holders.get(name)
        if holder is not None and holder != owner_id:
            raise errors.AlreadyExists(f"the {self._kind} name {name!r} is reserved for {holder}")
        self._holders[name] = owner_id  # before the await: a concurrent caller sees it taken
        text = json.dumps(intent or {})

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO name_reservations (name, kind, owner_id, created_at, intent) "
                         "VALUES (?, ?, ?, ?, ?)", (name, self._kind, owner_id, now_ns, text))

        try:
            await self._store.run(insert)
        except BaseException:
            self._holders.pop(name, None)
            raise

    async def settle(self, name: str, owner_id: str) -> None:
        """The creation is done and its caller about to be answered: its intent is no longer needed. A
        reservation whose holder has a record but is not settled is a creation whose answer never left crispd
        (cri/recovery.py keeps it for the caller's retry)."""
        await self._store.run(lambda c: c.execute(
            "UPDATE name_reservations SET intent = '{}' WHERE name = ? AND owner_id = ?", (name, owner_id)))

    async def release(self, name: str, owner_id: str) -> None:
        """Give the name back if owner_id holds it (idempotent)."""
        if self._holders.get(name) != owner_id:
            return
        del self._holders[name]
        await self._store.run(lambda c: c.execute(
            "DELETE FROM name_reservations WHERE name = ? AND owner_id = ?", (name, owner_id)))
