"""IP leases of the built-in bridge network in the metadata store (the `ip_leases` table).

The allocation rules are `runtime.network.ipam`'s; this module only keeps them atomic: the choice of an address and
its row are one transaction, so two pods never get the same address, also across crispd restarts. The last address
handed out per network and IP family lives in `settings` (`ipam.last.<network>.v4`), for round-robin reuse.
"""

from __future__ import annotations

import ipaddress
import sqlite3
from collections.abc import Sequence

from cri.store.db import Store
from runtime.network.ipam import IPInterface, IPNetwork, Lease, in_pod_range, next_free


def _last_key(network: str, version: int) -> str:
    return f"ipam.last.{network}.v{version}"


class SqliteLeaseStore:
    """`runtime.network.ipam.LeaseStore` over crispd's store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def acquire(self, network: str, sandbox_id: str, subnets: Sequence[IPNetwork]) -> list[IPInterface]:
        def allocate(conn: sqlite3.Connection) -> list[IPInterface]:
            rows = conn.execute("SELECT ip, sandbox_id FROM ip_leases WHERE network = ?", (network,)).fetchall()
            used = [ipaddress.ip_address(row["ip"]) for row in rows]
            mine = [ipaddress.ip_address(row["ip"]) for row in rows if row["sandbox_id"] == sandbox_id]
            out: list[IPInterface] = []
            for subnet in subnets:
                held = next((a for a in mine if in_pod_range(subnet, a)), None)
                if held is None:
                    key = _last_key(network, subnet.version)
                    row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
                    last = ipaddress.ip_address(row["value"]) if row is not None else None
                    held = next_free(subnet, used, last)
                    conn.execute("INSERT INTO ip_leases (network, ip, sandbox_id) VALUES (?, ?, ?)",
                                 (network, str(held), sandbox_id))
                    conn.execute("INSERT INTO settings (key, value) VALUES (?, ?) "
                                 "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, str(held)))
                    used.append(held)
                out.append(ipaddress.ip_interface(f"{held}/{subnet.prefixlen}"))
            return out

        return await self._store.transaction(allocate)

    async def release(self, network: str, sandbox_id: str) -> None:
        await self._store.transaction(lambda conn: conn.execute(
            "DELETE FROM ip_leases WHERE network = ? AND sandbox_id = ?", (network, sandbox_id)))

    async def leases(self, network: str) -> list[Lease]:
        def query(conn: sqlite3.Connection) -> list[Lease]:
            rows = conn.execute("SELECT network, ip, sandbox_id FROM ip_leases WHERE network = ? ORDER BY ip",
                                (network,)).fetchall()
            return [Lease(network=row["network"], ip=row["ip"], sandbox_id=row["sandbox_id"]) for row in rows]

        return await self._store.run(query)
