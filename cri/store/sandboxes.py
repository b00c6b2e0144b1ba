"""Pod sandboxes: immutable metadata plus a status changed only through `SandboxStore.update`.

The in-memory objects are a cache of the `sandboxes` table: every status change is written through, and `load`
rebuilds the cache at start. `meta` never changes after RunPodSandbox; `status` is replaced, never mutated.
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
from runtime.procs import ProcessRef

READY = "ready"
NOT_READY = "notready"


@dataclass(frozen=True)
class SandboxMeta:
    id: str
    name: str  # the reserved name: <name>_<namespace>_<uid>_<attempt>
    config: cri.PodSandboxConfig
    runtime_handler: str
    created_at: int  # ns
    dir: str  # <state>/sandboxes/<id>
    cgroup: str  # the pod cgroup, relative to the cgroup2 mount
    namespaces: dict[str, str]  # kind (net, ipc, uts, pid) -> pin path, for the namespaces the pod has of its own
    host_network: bool
    host_ipc: bool
    host_pid: bool
    hostname: str
    hostname_path: str
    hosts_path: str
    resolv_path: str
    shm_path: str  # the pod's /dev/shm (its own tmpfs, or the host's for host-IPC pods)
    # the network namespace's second pin, under its `ip netns` name (<[network] netns_dir>/crisp-<id>), or ""
    netns_path: str = ""

    @functools.cached_property
    def metadata_bytes(self) -> int:
        """What its labels, annotations and names take (cri/metadata_limits.py), counted once."""
        return metadata_limits.pod_bytes(self.config)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["config"]  # stored as protobuf bytes in its own column
        return data


@dataclass(frozen=True)
class SandboxStatus:
    state: str = READY
    pod_init: tuple[int, int] | None = None  # (pid, start time) of the shared PID namespace's init
    ips: tuple[str, ...] = ()
    network: dict[str, Any] = field(default_factory=dict)  # what the network backend needs for teardown

    def pod_init_ref(self) -> ProcessRef | None:
        return None if self.pod_init is None else ProcessRef(*self.pod_init)


class Sandbox:
    def __init__(self, meta: SandboxMeta, status: SandboxStatus) -> None:
        self.meta = meta
        self.status = status
        self.lock = asyncio.Lock()  # Stop, Remove and the creation of a container in one pod run one at a time

    @property
    def id(self) -> str:
        return self.meta.id

    def row(self) -> tuple[Any, ...]:
        info = {"meta": self.meta.to_json(), "status": dataclasses.asdict(self.status)}
        return (self.meta.id, self.meta.name, self.status.state, self.meta.runtime_handler, self.meta.created_at,
                self.meta.config.SerializeToString(), json.dumps(info))


def _from_row(row: sqlite3.Row) -> Sandbox:
    info = json.loads(row["info"])
    config = cri.PodSandboxConfig.FromString(row["config"])
    meta = SandboxMeta(config=config, **info["meta"])
    status_data = info["status"]
    if status_data.get("pod_init") is not None:
        status_data["pod_init"] = tuple(status_data["pod_init"])
    status_data["ips"] = tuple(status_data.get("ips", ()))
    return Sandbox(meta, SandboxStatus(**status_data))


class SandboxStore:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._sandboxes: dict[str, Sandbox] = {}

    async def load(self) -> list[Sandbox]:
        rows = await self._store.run(lambda c: c.execute("SELECT * FROM sandboxes").fetchall())
        self._sandboxes = {s.id: s for s in map(_from_row, rows)}
        return list(self._sandboxes.values())

    def get(self, id_or_prefix: str) -> Sandbox:
        """By full id or unique prefix; NOT_FOUND otherwise."""
        return self._sandboxes[resolve_id(self._sandboxes, id_or_prefix, "pod sandbox")]

    def find(self, id_or_prefix: str) -> Sandbox | None:
        """Like `get`, but None when there is no such pod (Stop and Remove of an unknown id are OK). An empty
        or ambiguous id is still INVALID_ARGUMENT: "I could not tell which" is never "it is not there"."""
        try:
            return self.get(id_or_prefix)
        except errors.NotFound:
            return None

    def all(self) -> list[Sandbox]:
        return list(self._sandboxes.values())

    async def add(self, sandbox: Sandbox) -> None:
        row = sandbox.row()
        await self._store.run(lambda c: c.execute(
            "INSERT INTO sandboxes (id, name, state, runtime_handler, created_at, config, info) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", row))
        self._sandboxes[sandbox.id] = sandbox

    async def update(self, sandbox: Sandbox, **changes: Any) -> SandboxStatus:
        """Replace fields of the status and write it through."""
        new = dataclasses.replace(sandbox.status, **changes)
        info = json.dumps({"meta": sandbox.meta.to_json(), "status": dataclasses.asdict(new)})
        await self._store.run(lambda c: c.execute(
            "UPDATE sandboxes SET state = ?, info = ? WHERE id = ?", (new.state, info, sandbox.id)))
        sandbox.status = new
        return new

    async def delete(self, sandbox: Sandbox) -> None:
        await self._store.run(lambda c: c.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox.id,)))
        self._sandboxes.pop(sandbox.id, None)
