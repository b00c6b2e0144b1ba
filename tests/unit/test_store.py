"""The metadata store: schema versions, migrations, settings, its own thread."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
from pathlib import Path

import pytest

from cri import api as cri
from cri.store.containers import EXITED, RUNNING, Container, ContainerMeta, ContainerStatus, ContainerStore
from cri.store.db import MIGRATIONS, SCHEMA_VERSION, SchemaTooNew, Store, migrate
from cri.store.names import NameIndex
from runtime import errors

TABLES = {"settings", "name_reservations", "sandboxes", "containers", "images", "image_names", "ip_leases",
          "container_removals"}


def test_fresh_database_gets_every_table(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    assert migrate(conn) == SCHEMA_VERSION
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert TABLES <= names
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert migrate(conn) == SCHEMA_VERSION  # a second run is a no-op


def test_migrations_step_one_version_at_a_time(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    migrate(conn)
    conn.execute("INSERT INTO settings (key, value) VALUES ('pod_cidr', '10.0.0.0/24')")
    newer = (*MIGRATIONS, "ALTER TABLE settings ADD COLUMN note TEXT NOT NULL DEFAULT ''")
    assert migrate(conn, newer) == len(newer)
    assert conn.execute("SELECT value, note FROM settings").fetchone() == ("10.0.0.0/24", "")


def test_failed_migration_changes_nothing(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    migrate(conn)
    broken = (*MIGRATIONS, "CREATE TABLE extra (a TEXT); INSERT INTO nosuchtable VALUES (1)")
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, broken)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchone() is None


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaTooNew):
        migrate(conn)


def test_store_runs_on_its_own_thread_and_persists(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = Store(tmp_path / "sub" / "crisp.db")
        await store.open()
        threads = await asyncio.gather(*(store.run(lambda c: threading.current_thread().name) for _ in range(5)))
        assert len(set(threads)) == 1 and threads[0] != threading.current_thread().name
        assert await store.run(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
        await store.set_setting("pod_cidr", "10.1.0.0/16")
        await store.set_setting("pod_cidr", "10.2.0.0/16")
        with pytest.raises(ValueError):
            await store.transaction(lambda c: (c.execute("INSERT INTO settings VALUES ('a', 'b')"),
                                               (_ for _ in ()).throw(ValueError("undo"))))
        await store.close()

        again = Store(tmp_path / "sub" / "crisp.db")
        await again.open()
        assert await again.get_setting("pod_cidr") == "10.2.0.0/16"
        assert await again.get_setting("a") is None  # the failed transaction was rolled back
        await again.close()

    asyncio.run(scenario())


def _container(container_id: str) -> Container:
    meta = ContainerMeta(id=container_id, name="c_p_ns_uid_0", sandbox_id="p" * 64, config=cri.ContainerConfig(),
                         created_at=1, image_id="sha256:" + "a" * 64, image_ref="", image_name="busybox",
                         handler="", bundle="/b", container_dir="/c", lowerdirs=(), log_path="", cgroup="/x",
                         stop_signal=15, uid=0, gid=0, groups=())
    return Container(meta, ContainerStatus(state=RUNNING))


def test_status_updates_that_overlap_lose_nothing(tmp_path: Path) -> None:
    """An exit recorded while UpdateContainerResources writes its row (lowering memory.max OOM-kills the
    container): both changes stay, in memory and in the row; a second exit report changes nothing."""

    async def scenario() -> None:
        store = Store(tmp_path / "crisp.db")
        await store.open()
        containers = ContainerStore(store)
        container = _container("c" * 64)
        await store.run(lambda c: c.execute(
            "INSERT INTO sandboxes (id, name, state, runtime_handler, created_at, config) VALUES (?, ?, ?, ?, ?, ?)",
            (container.meta.sandbox_id, "p_ns_uid_0", "ready", "", 1, b"")))
        await containers.add(container)
        recorded = await asyncio.gather(
            containers.update(container, resources="0801"),
            containers.record_exit(container, exit_code=137, reason="OOMKilled"),
            containers.record_exit(container, exit_code=1, reason="Error"))
        assert recorded[1:] == [True, False]
        for status in (container.status, (await ContainerStore(store).load())[0].status):
            assert (status.state, status.exit_code, status.reason, status.resources) == (
                EXITED, 137, "OOMKilled", "0801")
        assert container.exited.is_set()
        await store.close()

    asyncio.run(scenario())


def test_a_removal_is_journaled_with_the_rows_deletion(tmp_path: Path) -> None:
    """RemoveContainer's delete writes the journal entry of the remains in the same transaction: the row is gone,
    the entry there (also for a new store on the same database: crispd's next start), until `removal_done`; the
    removed container's layers count as in use until then."""

    async def scenario() -> None:
        store = Store(tmp_path / "crisp.db")
        await store.open()
        containers = ContainerStore(store)
        container = Container(dataclasses.replace(_container("c" * 64).meta, lowerdirs=("/s/1/fs",)),
                              ContainerStatus(state=RUNNING))
        await store.run(lambda c: c.execute(
            "INSERT INTO sandboxes (id, name, state, runtime_handler, created_at, config) VALUES (?, ?, ?, ?, ?, ?)",
            (container.meta.sandbox_id, "p_ns_uid_0", "ready", "", 1, b"")))
        await containers.add(container)
        await containers.delete(container, {"bundle": "/b", "container_dir": "/c", "cgroup": "/x"})
        assert containers.find(container.id) is None
        assert [m.lowerdirs for m in containers.removing()] == [("/s/1/fs",)]
        again = ContainerStore(store)
        assert await again.load() == []
        assert [(r.id, r.sandbox_id, r.remains["bundle"]) for r in await again.removals()] == [
            (container.id, container.meta.sandbox_id, "/b")]
        await containers.removal_done(container.id)
        assert containers.removing() == [] and await again.removals() == []
        await store.close()

    asyncio.run(scenario())


def test_find_says_not_there_only_when_it_is_not(tmp_path: Path) -> None:
    """`find` (Stop and Remove) is None only for an unknown id: an ambiguous prefix or an empty id is
    INVALID_ARGUMENT, as `get` (every other RPC) has it; once it swallowed every error and Stop/Remove answered OK
    for an id they never resolved."""

    async def scenario() -> None:
        store = Store(tmp_path / "crisp.db")
        await store.open()
        containers = ContainerStore(store)
        first = _container("ab1" + "0" * 61)
        second = Container(dataclasses.replace(_container("ab2" + "0" * 61).meta, name="d_p_ns_uid_0"),
                           ContainerStatus(state=RUNNING))
        await store.run(lambda c: c.execute(
            "INSERT INTO sandboxes (id, name, state, runtime_handler, created_at, config) VALUES (?, ?, ?, ?, ?, ?)",
            (first.meta.sandbox_id, "p_ns_uid_0", "ready", "", 1, b"")))
        await containers.add(first)
        await containers.add(second)
        assert containers.find("ab1") is first and containers.find(second.id) is second
        assert containers.find("ff") is None
        with pytest.raises(errors.NotFound):
            containers.get("ff")
        for bad in ("ab", ""):
            with pytest.raises(errors.InvalidArgument):
                containers.find(bad)
            with pytest.raises(errors.InvalidArgument):
                containers.get(bad)
        await store.close()

    asyncio.run(scenario())


def test_a_version_1_database_keeps_its_reservations_settled(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    migrate(conn, MIGRATIONS[:1])
    conn.execute("INSERT INTO name_reservations (name, kind, owner_id, created_at) VALUES ('web', 'sandbox', 'a', 1)")
    migrate(conn)
    # a creation of an older crisp is finished or not by its row alone: nothing claims it was never answered
    assert conn.execute("SELECT intent FROM name_reservations").fetchone() == ("{}",)


def test_reservations_keep_their_intent_until_settled(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = Store(tmp_path / "crisp.db")
        await store.open()
        names = NameIndex(store, "container")
        await names.reserve("app", "c1", 1, {"bundle": "/run/crisp/containers/c1"})
        await names.reserve("db", "c2", 2)
        assert sorted((r.name, r.owner_id, r.intent) for r in await names.reservations()) == [
            ("app", "c1", {"bundle": "/run/crisp/containers/c1"}), ("db", "c2", {})]
        await names.settle("app", "other")  # only its holder's reservation
        assert {r.name: r.intent for r in await names.reservations()}["app"]
        await names.settle("app", "c1")
        again = NameIndex(store, "container")
        await again.load()
        assert again.holder("app") == "c1"
        assert {r.name: r.intent for r in await again.reservations()} == {"app": {}, "db": {}}
        assert await NameIndex(store, "sandbox").reservations() == []
        await store.close()

    asyncio.run(scenario())
