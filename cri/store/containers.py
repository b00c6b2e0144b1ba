"""Containers: immutable metadata plus a status changed only through `ContainerStore.update`.

Like pods, the in-memory objects cache the `containers` table; every status change is written through.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from cri import api as cri
from cri import metadata_limits
from cri.store.db import Store
from cri.store.truncindex import resolve_id
from runtime import errors

CREATED = "created"
RUNNING = "running"
EXITED = "exited"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Removal:
    """A journaled removal: the container's row is gone, its remains (JSON, the controller's) not yet."""

    id: str
    sandbox_id: str
    remains: dict[str, Any]


@dataclass(frozen=True)
class ContainerMeta:
    id: str
    name: str  # the reserved name: <name>_<pod name>_<pod namespace>_<pod uid>_<attempt>
    sandbox_id: str
    config: cri.ContainerConfig
    created_at: int  # ns
    image_id: str  # sha256:<config digest>
    image_ref: str  # the repo digest the image was resolved by
    image_name: str  # what ContainerStatus.image reports (the name asked for; a repo tag when asked by id)
    handler: str
    bundle: str  # <state>/containers/<id>
    container_dir: str  # <root>/containers/<id>: the writable layer (upper, work)
    lowerdirs: tuple[str, ...]  # the image snapshots under it, topmost first
    log_path: str  # "" when the pod has no log directory or the container no log path
    cgroup: str
    stop_signal: int
    uid: int
    gid: int
    groups: tuple[int, ...]
    # the snapshots of the images its image volumes show (held in use while the container exists)
    volume_snapshots: tuple[str, ...] = ()

    @functools.cached_property
    def metadata_bytes(self) -> int:
        """What its labels, annotations and names take (cri/metadata_limits.py), counted once."""
        return metadata_limits.container_bytes(self.config)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["config"]
        return data


@dataclass(frozen=True)
class ContainerStatus:
    state: str = CREATED
    pid: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    # the resources in force (as created, then as UpdateContainerResources last set them), without the limits
    # dropped for a missing cgroup controller; serialized LinuxContainerResources
    resources: str = ""
    # the limits asked for but dropped ([cgroup] missing_controller = "warn"): "memory.limit (needs memory)"
    dropped_limits: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class Container:
    def __init__(self, meta: ContainerMeta, status: ContainerStatus) -> None:
        self.meta = meta
        self.status = status
        self.lock = asyncio.Lock()  # Start, Stop, Remove and Update of one container run one at a time
        self.exited = asyncio.Event()  # set once the status says the container has exited
        if status.state == EXITED:
            self.exited.set()

    @property
    def id(self) -> str:
        return self.meta.id

    @property
    def unmade(self) -> bool:
        """Created but not made yet: CreateContainer records the container with pid 0 (its spec and shim are
        ready), StartContainer has the executor create it and records its init's pid (cri/lifecycle/containers.py)."""
        return self.status.state == CREATED and self.status.pid == 0

    def info_json(self, status: ContainerStatus | None = None) -> str:
        return json.dumps({"meta": self.meta.to_json(), "status": dataclasses.asdict(status or self.status)})


def _from_row(row: sqlite3.Row) -> Container:
    info = json.loads(row["info"])
    meta_data = info["meta"]
    meta_data["lowerdirs"] = tuple(meta_data["lowerdirs"])
    meta_data["groups"] = tuple(meta_data["groups"])
    meta_data["volume_snapshots"] = tuple(meta_data.get("volume_snapshots", ()))
    meta = ContainerMeta(config=cri.ContainerConfig.FromString(row["config"]), **meta_data)
    return Container(meta, ContainerStatus(**info["status"]))


class ContainerStore:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._containers: dict[str, Container] = {}
        self._removing: dict[str, ContainerMeta] = {}  # removed, not yet cleaned up (`delete` with remains)
        # status updates read the current status, write the row, then set it: two of them interleaved (an exit
        # recorded while UpdateContainerResources writes) would lose one's changes, so they take turns
        self._updating = asyncio.Lock()

    async def load(self) -> list[Container]:
        rows = await self._store.run(lambda c: c.execute("SELECT * FROM containers").fetchall())
        self._containers = {c.id: c for c in map(_from_row, rows)}
        return list(self._containers.values())

    def get(self, id_or_prefix: str) -> Container:
        """By full id or unique prefix; NOT_FOUND, or INVALID_ARGUMENT for an empty or ambiguous id."""
        return self._containers[resolve_id(self._containers, id_or_prefix, "container")]

    def find(self, id_or_prefix: str) -> Container | None:
        """Like `get`, but None when there is no such container (Stop and Remove of an unknown id are OK). An empty
        or ambiguous id is still INVALID_ARGUMENT: "I could not tell which" is never "it is not there"."""
        try:
            return self.get(id_or_prefix)
        except errors.NotFound:
            return None

    def all(self) -> list[Container]:
        return list(self._containers.values())

    def of_sandbox(self, sandbox_id: str) -> list[Container]:
        return [c for c in self._containers.values() if c.meta.sandbox_id == sandbox_id]

    async def add(self, container: Container) -> None:
        meta = container.meta
        row = (meta.id, meta.sandbox_id, meta.name, container.status.state, meta.image_id, meta.created_at,
               meta.config.SerializeToString(), container.info_json())
        await self._store.run(lambda c: c.execute(
            "INSERT INTO containers (id, sandbox_id, name, state, image_id, created_at, config, info) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row))
        self._containers[container.id] = container

    async def update(self, container: Container, **changes: Any) -> ContainerStatus:
        async with self._updating:
            return await self._update(container, changes)

    async def record_exit(self, container: Container, **changes: Any) -> bool:
        """Set the container EXITED with `changes`, unless it already is (an exit is recorded once): whether it
        was set now."""
        async with self._updating:
            if container.status.state == EXITED:
                return False
            await self._update(container, {**changes, "state": EXITED})
            return True

    async def _update(self, container: Container, changes: dict[str, Any]) -> ContainerStatus:
        new = dataclasses.replace(container.status, **changes)
        info = container.info_json(new)
        await self._store.run(lambda c: c.execute(
            "UPDATE containers SET state = ?, info = ? WHERE id = ?", (new.state, info, container.id)))
        container.status = new
        if new.state == EXITED:
            container.exited.set()
        return new

    async def delete(self, container: Container, remains: dict[str, Any] | None = None) -> None:
        """The row goes; with `remains` (what is left to clean up, as JSON) a removal is journaled in the same
        transaction (`removals`, `removal_done`)."""
        def delete(conn: sqlite3.Connection) -> None:
            if remains is not None:
                conn.execute("INSERT OR REPLACE INTO container_removals (id, sandbox_id, remains) VALUES (?, ?, ?)",
                             (container.id, container.meta.sandbox_id, json.dumps(remains)))
            conn.execute("DELETE FROM containers WHERE id = ?", (container.id,))

        await self._store.transaction(delete)
        self._containers.pop(container.id, None)
        if remains is not None:
            self._removing[container.id] = container.meta

    async def removals(self) -> list[Removal]:
        """The removed containers whose cleanup is not done yet."""
        rows = await self._store.run(
            lambda c: c.execute("SELECT id, sandbox_id, remains FROM container_removals").fetchall())
        return [Removal(str(r["id"]), str(r["sandbox_id"]), json.loads(r["remains"])) for r in rows]

    async def removal_done(self, container_id: str) -> None:
        await self._store.run(lambda c: c.execute("DELETE FROM container_removals WHERE id = ?", (container_id,)))
        self._removing.pop(container_id, None)

    def removing(self) -> list[ContainerMeta]:
        """The containers removed by this crispd whose cleanup is not done: their layers are still in use."""
        return list(self._removing.values())
