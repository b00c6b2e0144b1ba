"""Address management for the built-in bridge: which addresses of a pod CIDR a pod may have, and the lease seam.

The leases live in crispd's metadata store (`cri/store/leases.py` implements `LeaseStore`); this module holds the
rules they follow, so that they are the same wherever they are stored:
- the first host address of a subnet is the bridge's (the pods' gateway); the network and (IPv4) broadcast
  addresses are never handed out;
- addresses are handed out round-robin after the last one given, so an address that was just returned is the last
  to be reused (stale ARP and conntrack entries of its former pod have time to expire);
- a pod asking again gets the address it already holds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from runtime import errors

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

DEFAULT_POD_CIDR = "10.88.0.0/16"


def parse_pod_cidrs(value: str) -> list[IPNetwork]:
    """A pod CIDR setting: one network or a comma-separated dual-stack pair (at most one per IP family)."""
    subnets: list[IPNetwork] = []
    for part in value.split(","):
        try:
            subnets.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError as exc:
            raise errors.InvalidArgument(f"pod CIDR {value!r}: {exc}") from None
    if len({s.version for s in subnets}) != len(subnets):
        raise errors.InvalidArgument(f"pod CIDR {value!r}: at most one network per IP family")
    for subnet in subnets:
        if subnet.max_prefixlen - subnet.prefixlen < 2:
            raise errors.InvalidArgument(f"pod CIDR {subnet}: too small for a gateway and a pod")
    return subnets


def gateway(subnet: IPNetwork) -> IPInterface:
    """The bridge's address in a pod subnet: its first host address, with the subnet's prefix length."""
    return ipaddress.ip_interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")


def _bounds(subnet: IPNetwork) -> tuple[int, int]:
    """The first and last address (as integers) a pod may get."""
    first = int(subnet.network_address) + 2
    last = int(subnet.broadcast_address) - (1 if subnet.version == 4 else 0)
    return first, last


def in_pod_range(subnet: IPNetwork, address: IPAddress) -> bool:
    first, last = _bounds(subnet)
    return address.version == subnet.version and first <= int(address) <= last


def next_free(subnet: IPNetwork, used: Collection[IPAddress], last_given: IPAddress | None) -> IPAddress:
    """The first free pod address after `last_given` (wrapping around); ResourceExhausted when the subnet is full."""
    first, last = _bounds(subnet)
    size = last - first + 1
    taken = {int(a) for a in used if a.version == subnet.version and first <= int(a) <= last}
    if len(taken) >= size:
        raise errors.ResourceExhausted(f"pod CIDR {subnet}: every address is leased")
    start = first
    if last_given is not None and last_given.version == subnet.version and first <= int(last_given) <= last:
        start = int(last_given) + 1
    candidate = start
    for _ in range(size):
        if candidate > last:
            candidate = first
        if candidate not in taken:
            return ipaddress.ip_address(candidate)
        candidate += 1
    raise errors.ResourceExhausted(f"pod CIDR {subnet}: every address is leased")  # unreachable: taken < size


@dataclass(frozen=True)
class Lease:
    network: str
    ip: str
    sandbox_id: str


class LeaseStore(Protocol):
    """Persistent IP leases, one row per (network, address)."""

    async def acquire(self, network: str, sandbox_id: str, subnets: Sequence[IPNetwork]) -> list[IPInterface]:
        """One address per subnet for the sandbox, in the order of `subnets`, with the subnet's prefix length:
        the address it already holds in that subnet, else a new one (`next_free`), recorded atomically."""
        ...

    async def release(self, network: str, sandbox_id: str) -> None:
        """Return every address the sandbox holds in the network (a no-op when it holds none)."""
        ...

    async def leases(self, network: str) -> list[Lease]:
        """Every lease in the network."""
        ...
