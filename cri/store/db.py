"""crispd's metadata database: SQLite (WAL) under the root dir, used from one dedicated thread.

The event loop never touches SQLite itself: every query runs on the store's own thread through `Store.run`.
The schema is versioned (`PRAGMA user_version`); `MIGRATIONS[i]` takes a database from version i to i + 1.
In-memory objects elsewhere are caches of these rows, rebuilt at start.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from runtime import errors

log = logging.getLogger(__name__)

T = TypeVar("T")
SQLITE_FULL = 13  # "database or disk is full"

# Rows keep the CRI config as serialized protobuf (`config`) and everything crisp learned while creating the
# object as JSON (`info`); the columns are what lists filter and join on.
_SCHEMA_V1 = """
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- a pod or container name is reserved from Run/Create until Remove
CREATE TABLE name_reservations (
    name       TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('sandbox', 'container')),
    owner_id   TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE sandboxes (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    state           TEXT NOT NULL,
    runtime_handler TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    config          BLOB NOT NULL,
    info            TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE containers (
    id          TEXT PRIMARY KEY,
    sandbox_id  TEXT NOT NULL REFERENCES sandboxes(id),
    name        TEXT NOT NULL UNIQUE,
    state       TEXT NOT NULL,
    image_id    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    config      BLOB NOT NULL,
    info        TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX containers_by_sandbox ON containers(sandbox_id);
CREATE TABLE images (
    id          TEXT PRIMARY KEY,          -- sha256:<config digest>
    size        INTEGER NOT NULL,
    config      TEXT NOT NULL,             -- the image config JSON
    info        TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL
);
-- repo tags and repo digests of an image; a name points at exactly one image
CREATE TABLE image_names (
    name      TEXT PRIMARY KEY,
    kind      TEXT NOT NULL CHECK (kind IN ('tag', 'digest')),
    image_id  TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE INDEX image_names_by_image ON image_names(image_id);
CREATE TABLE ip_leases (
    network    TEXT NOT NULL,
    ip         TEXT NOT NULL,
    sandbox_id TEXT NOT NULL,
    PRIMARY KEY (network, ip)
);
"""

# v2: a name reservation keeps what its creation is about to make (JSON), so that a crispd that died half way
# through a creation finds and undoes it at its next start (cri/recovery.py)
_SCHEMA_V2 = """
ALTER TABLE name_reservations ADD COLUMN intent TEXT NOT NULL DEFAULT '{}';
"""

# v3: a removed container whose remains (its shim, mounts, cgroup, dirs) are not yet cleaned up: written with the
# deletion of its row, deleted once the cleanup is done (cri/lifecycle/containers.py; recovery finishes the rest)
_SCHEMA_V3 = """
CREATE TABLE container_removals (
    id         TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    remains    TEXT NOT NULL
);
"""

MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(Exception):
    """The database was written by a newer crisp."""


def migrate(conn: sqlite3.Connection, migrations: Sequence[str] = MIGRATIONS) -> int:
    """Bring the database to the newest schema, one transaction per step; returns the version reached."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(migrations):
        raise SchemaTooNew(f"the database has schema version {version}; this crisp knows up to {len(migrations)}")
    for target in range(version + 1, len(migrations) + 1):
        log.info("migrating the metadata database to schema version %d", target)
        with conn:
            conn.execute("BEGIN")
            for statement in _statements(migrations[target - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
    return len(migrations)


def _statements(script: str) -> list[str]:
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class Store:
    """The metadata database, opened and used on its own thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crisp-sqlite")
        self._conn: sqlite3.Connection | None = None

    def prestart(self) -> None:
        """Start the store's thread now, before the event loop runs: a thread started from the loop holds it
        until the new thread runs, which on a busy host is a stall of tens of milliseconds."""
        self._thread.submit(lambda: None).result()

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode: transactions are explicit (`transaction`), so nothing stays open by accident
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
        migrate(conn)
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._call(self._close)
        # the thread is idle now; joining it would hold the loop until it is scheduled (the interpreter joins it)
        self._thread.shutdown(wait=False)

    def _close(self) -> None:
        assert self._conn is not None
        self._conn.close()
        self._conn = None

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn(connection) on the store's thread."""

        def call() -> T:
            if self._conn is None:
                raise RuntimeError("the metadata store is not open")
            try:
                return fn(self._conn)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode == SQLITE_FULL:
                    raise errors.ResourceExhausted(
                        f"no space left to write the metadata database {self.path}: {exc}") from exc
                raise

        return await self._call(call)

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn(connection) on the store's thread inside one transaction (rolled back if fn raises)."""

        def call(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self.run(call)

    async def get_setting(self, key: str) -> str | None:
        def query(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row["value"])

        return await self.run(query)

    async def set_setting(self, key: str, value: str) -> None:
        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

        await self.run(update)
