"""IPAM rules of the built-in bridge and its leases in the SQLite store (no root needed)."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from cri.store.db import Store
from cri.store.leases import SqliteLeaseStore
from runtime import errors
from runtime.network.ipam import gateway, in_pod_range, next_free, parse_pod_cidrs


def test_parse_pod_cidrs() -> None:
    assert [str(s) for s in parse_pod_cidrs("10.88.0.0/16")] == ["10.88.0.0/16"]
    assert [str(s) for s in parse_pod_cidrs("10.1.2.3/24, fd00:1::/64")] == ["10.1.2.0/24", "fd00:1::/64"]
    for bad, why in [("10.0.0.0/8,10.1.0.0/16", "one network per IP family"), ("10.0.0.0/31", "too small"),
                     ("nonsense", "nonsense"), ("", "does not appear")]:
        with pytest.raises(errors.InvalidArgument, match=why):
            parse_pod_cidrs(bad)


def test_gateway_and_range() -> None:
    subnet = ipaddress.ip_network("10.9.0.0/24")
    assert str(gateway(subnet)) == "10.9.0.1/24"
    assert not in_pod_range(subnet, ipaddress.ip_address("10.9.0.1"))  # the gateway
    assert in_pod_range(subnet, ipaddress.ip_address("10.9.0.2"))
    assert in_pod_range(subnet, ipaddress.ip_address("10.9.0.254"))
    assert not in_pod_range(subnet, ipaddress.ip_address("10.9.0.255"))  # broadcast
    v6 = ipaddress.ip_network("fd00::/120")
    assert str(gateway(v6)) == "fd00::1/120"
    assert in_pod_range(v6, ipaddress.ip_address("fd00::ff"))  # no broadcast in IPv6


def test_next_free_is_round_robin_and_wraps() -> None:
    subnet = ipaddress.ip_network("10.9.0.0/29")  # pods: .2 - .6
    a = ipaddress.ip_address
    assert next_free(subnet, [], None) == a("10.9.0.2")
    assert next_free(subnet, [a("10.9.0.2")], a("10.9.0.2")) == a("10.9.0.3")
    # .3 was just returned: the next pod gets .4, not .3 again
    assert next_free(subnet, [a("10.9.0.2")], a("10.9.0.3")) == a("10.9.0.4")
    assert next_free(subnet, [a("10.9.0.2")], a("10.9.0.6")) == a("10.9.0.3")  # wraps, skipping the used .2
    assert next_free(subnet, [], a("10.200.0.9")) == a("10.9.0.2")  # a last address of another subnet
    full = [a(f"10.9.0.{i}") for i in range(2, 7)]
    with pytest.raises(errors.ResourceExhausted):
        next_free(subnet, full, None)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_leases_are_unique_sticky_persistent_and_returned(tmp_path: Path) -> None:
    v4 = ipaddress.ip_network("10.9.0.0/24")

    async def first_life() -> dict[str, str]:
        store = Store(tmp_path / "crisp.db")
        await store.open()
        leases = SqliteLeaseStore(store)
        got = await asyncio.gather(*(leases.acquire("crisp0", f"pod{i}", [v4]) for i in range(50)))
        ips = {f"pod{i}": str(addrs[0].ip) for i, addrs in enumerate(got)}
        assert len(set(ips.values())) == 50
        assert all(addrs[0].network.prefixlen == 24 for addrs in got)
        # asking again: the same address
        assert str((await leases.acquire("crisp0", "pod7", [v4]))[0].ip) == ips["pod7"]
        # another network has its own addresses
        assert str((await leases.acquire("crisp1", "pod7", [v4]))[0].ip) == "10.9.0.2"
        await store.close()
        return ips

    ips = run(first_life())

    async def second_life() -> None:
        store = Store(tmp_path / "crisp.db")
        await store.open()
        leases = SqliteLeaseStore(store)
        assert {lease.sandbox_id: lease.ip for lease in await leases.leases("crisp0")} == ips
        new = str((await leases.acquire("crisp0", "newpod", [v4]))[0].ip)
        assert new not in ips.values()
        await leases.release("crisp0", "pod3")
        await leases.release("crisp0", "pod3")  # a no-op the second time
        assert "pod3" not in {lease.sandbox_id for lease in await leases.leases("crisp0")}
        assert len(await leases.leases("crisp1")) == 1
        await store.close()

    run(second_life())


def test_dual_stack_and_exhaustion_are_atomic(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = Store(tmp_path / "crisp.db")
        await store.open()
        leases = SqliteLeaseStore(store)
        v6 = ipaddress.ip_network("fd00:9::/64")
        tiny = ipaddress.ip_network("10.9.0.0/30")  # one pod address: .2
        got = await leases.acquire("n", "a", [tiny, v6])
        assert [str(a) for a in got] == ["10.9.0.2/30", "fd00:9::2/64"]
        with pytest.raises(errors.ResourceExhausted):
            await leases.acquire("n", "b", [v6, tiny])  # v6 would fit, v4 does not: nothing is kept
        assert [lease.sandbox_id for lease in await leases.leases("n")] == ["a", "a"]
        await store.close()

    run(scenario())
