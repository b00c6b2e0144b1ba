"""Interface counters of a network namespace, from /proc/net/dev (read by the network helper inside the pod's
namespace: /proc/self/net shows the namespace of the reading process)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PROC_NET_DEV = "/proc/self/net/dev"


@dataclass(frozen=True)
class InterfaceCounters:
    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InterfaceCounters:
        return cls(name=str(data["name"]), **{k: int(data[k]) for k in (
            "rx_bytes", "rx_packets", "rx_errors", "rx_dropped", "tx_bytes", "tx_packets", "tx_errors",
            "tx_dropped")})


def parse_proc_net_dev(text: str) -> list[InterfaceCounters]:
    """The interfaces of /proc/net/dev in its order: two header lines, then `name: 8 receive and 8 transmit
    counters` (bytes packets errs drop fifo frame|colls compressed multicast|carrier)."""
    out = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 16:
            continue
        try:
            v = [int(f) for f in fields[:16]]
        except ValueError:
            continue
        out.append(InterfaceCounters(name=name.strip(), rx_bytes=v[0], rx_packets=v[1], rx_errors=v[2],
                                     rx_dropped=v[3], tx_bytes=v[8], tx_packets=v[9], tx_errors=v[10],
                                     tx_dropped=v[11]))
    return out


def read_interface_counters() -> list[InterfaceCounters]:
    """The current network namespace's interfaces (blocking: the helper's work)."""
    with open(PROC_NET_DEV, encoding="ascii") as f:
        return parse_proc_net_dev(f.read())
