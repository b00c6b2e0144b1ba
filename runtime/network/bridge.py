"""The built-in bridge network: crispd's side (addresses, rollback, status); the helper does the kernel work.

A pod gets one address per pod subnet (leases in crispd's store), a veth pair whose host end `crisp<hash>` sits on
the bridge and whose other end is the pod's eth0, a default route via the bridge, and its hostPorts as DNAT rules
in the network's nftables table. The bridge's name also names its nftables table and its leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.batching import Batcher
from runtime.network.helper_client import HelperCrashed, HelperRunner, HelperTimeout
from runtime.network.ipam import DEFAULT_POD_CIDR, IPNetwork, LeaseStore, gateway, parse_pod_cidrs
from runtime.network.nft import nft_binary_path
from runtime.network.types import (
    NOT_READY_REASON,
    POD_IFNAME,
    Interface,
    IPConfig,
    NetworkResult,
    NetworkStatus,
    PodNetworkRequest,
    Route,
)
from runtime.rollback import Rollback

log = logging.getLogger(__name__)

DEFAULT_BRIDGE = "crisp0"
# a bridge name is also an nftables table name: keep to the characters both accept
_BRIDGE_NAME = re.compile(r"^crisp[A-Za-z0-9_]{0,10}$")
# cleaning up after a helper that was killed midway gets at least this long (failing it would leak)
CLEANUP_TIMEOUT_SECONDS = 30.0


def check_bridge_name(name: str) -> None:
    if not _BRIDGE_NAME.match(name):
        raise errors.InvalidArgument(
            f"bridge name {name!r}: must start with 'crisp', then at most 10 letters, digits or '_'")


def host_veth_name(bridge: str, sandbox_id: str) -> str:
    """The host end of a pod's veth pair: `crisp` + 10 hex digits of a hash of bridge and sandbox (15 chars,
    the kernel's limit), so pods of different bridges (test runs side by side) never collide."""
    return "crisp" + hashlib.sha256(f"{bridge}/{sandbox_id}".encode()).hexdigest()[:10]


@dataclass(frozen=True)
class BridgeNetwork:
    """What the helper needs to know about the network (sent with every request)."""

    bridge: str
    subnets: tuple[IPNetwork, ...]
    mtu: int = 1500
    masquerade: bool = True

    @property
    def table(self) -> str:
        return self.bridge

    def to_json(self) -> dict[str, Any]:
        return {"bridge": self.bridge, "subnets": [str(s) for s in self.subnets], "mtu": self.mtu,
                "masquerade": self.masquerade}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BridgeNetwork:
        bridge = str(data["bridge"])
        check_bridge_name(bridge)
        return cls(bridge=bridge, subnets=tuple(ipaddress.ip_network(s) for s in data["subnets"]),
                   mtu=int(data.get("mtu", 1500)), masquerade=bool(data.get("masquerade", True)))


class BridgeBackend:
    """`NetworkBackend` for the built-in bridge."""

    name = "bridge"

    def __init__(self, *, leases: LeaseStore, pod_cidr: Callable[[], Awaitable[str]], helper: HelperRunner,
                 bridge: str = DEFAULT_BRIDGE, mtu: int = 1500, masquerade: bool = True) -> None:
        check_bridge_name(bridge)
        self.bridge = bridge
        self.mtu = mtu
        self.masquerade = masquerade
        self._leases = leases
        self._pod_cidr = pod_cidr
        self._helper = helper
        # concurrent teardowns go to the helper together: one veth deletion (RCU wait under RTNL), one rules listing
        self._detacher: Batcher[dict[str, Any]] = Batcher(self._detach_together)

    async def network(self) -> BridgeNetwork:
        """The network as configured now (the pod CIDR may change with the kubelet's UpdateRuntimeConfig)."""
        cidr = await self._pod_cidr() or DEFAULT_POD_CIDR
        return BridgeNetwork(bridge=self.bridge, subnets=tuple(parse_pod_cidrs(cidr)), mtu=self.mtu,
                             masquerade=self.masquerade)

    def _request(self, op: str, net: BridgeNetwork, pod: PodNetworkRequest, **extra: Any) -> dict[str, Any]:
        return {"op": op, "network": net.to_json(), "sandboxId": pod.sandbox_id, "netns": pod.netns,
                "veth": host_veth_name(net.bridge, pod.sandbox_id), **extra}

    async def setup(self, pod: PodNetworkRequest) -> NetworkResult:
        net = await self.network()
        log.info("pod %s: attaching to bridge %s (%s)", pod.sandbox_id, net.bridge,
                 ", ".join(str(s) for s in net.subnets))
        # the helper undoes its own steps when it fails, but not when it is killed (timeout, cancellation) or
        # crashes: then the undo detaches the pod before it returns the leases, which are the record that something
        # may exist (a failed detach keeps them, and the next teardown tries again)
        helper_incomplete = False

        async def undo() -> None:
            if helper_incomplete:
                await self._detach(pod, time_limit=max(self._helper.timeout, CLEANUP_TIMEOUT_SECONDS))
            await self._leases.release(net.bridge, pod.sandbox_id)

        async with Rollback(f"pod {pod.sandbox_id}: bridge network setup") as rollback:
            addresses = await self._leases.acquire(net.bridge, pod.sandbox_id, net.subnets)
            rollback.push("detach the pod and release its leases", undo)
            request = self._request("setup", net, pod, addresses=[str(a) for a in addresses],
                                    portMappings=[pm.to_json() for pm in pod.port_mappings])
            try:
                reply = await self._helper.call(request)
            except (HelperTimeout, HelperCrashed, asyncio.CancelledError):
                helper_incomplete = True
                raise
            rollback.commit()
        gateways = {s.version: gateway(s) for s in net.subnets}
        result = NetworkResult(
            backend=self.name, network=net.bridge,
            interfaces=(Interface(name=request["veth"], mac=str(reply.get("hostMac", ""))),
                        Interface(name=POD_IFNAME, mac=str(reply.get("podMac", "")), sandbox=pod.netns)),
            ips=tuple(IPConfig(address=str(a), gateway=str(gateways[a.version].ip), interface=1) for a in addresses),
            routes=tuple(Route(dst="0.0.0.0/0" if v == 4 else "::/0", gw=str(g.ip)) for v, g in gateways.items()),
            dns=pod.dns,
        )
        log.info("pod %s: attached to bridge %s as %s", pod.sandbox_id, net.bridge, ", ".join(result.pod_ips))
        return result

    async def _detach(self, pod: PodNetworkRequest, time_limit: float | None = None) -> None:
        """The pod's veth and rules gone (alone, within `time_limit`: a setup's cleanup after its helper)."""
        item = self._detach_item(pod, await self._held(pod))
        await self._helper.call(self._teardown_request([item]), time_limit=time_limit)

    def _detach_item(self, pod: PodNetworkRequest, held: list[str]) -> dict[str, Any]:
        # teardown needs only names and what the pod held, not the pod CIDR (which may have changed or be broken)
        return {"sandboxId": pod.sandbox_id, "veth": host_veth_name(self.bridge, pod.sandbox_id),
                "addresses": [f"{ip}/32" if ":" not in ip else f"{ip}/128" for ip in held],
                "portMappings": [pm.to_json() for pm in pod.port_mappings]}

    def _teardown_request(self, pods: list[dict[str, Any]]) -> dict[str, Any]:
        return {"op": "teardown", "network": BridgeNetwork(bridge=self.bridge, subnets=()).to_json(), "pods": pods}

    async def _detach_together(self, pods: list[dict[str, Any]]) -> list[BaseException | None]:
        """One helper request for the pods of a batch; if it fails, each pod on its own, so that each caller gets
        its own pod's outcome."""
        try:
            await self._helper.call(self._teardown_request(pods))
            return [None] * len(pods)
        except Exception:
            if len(pods) == 1:
                raise
        outcomes = await asyncio.gather(*(self._helper.call(self._teardown_request([pod])) for pod in pods),
                                        return_exceptions=True)
        return [outcome if isinstance(outcome, BaseException) else None for outcome in outcomes]

    async def _held(self, pod: PodNetworkRequest) -> list[str]:
        return [lease.ip for lease in await self._leases.leases(self.bridge) if lease.sandbox_id == pod.sandbox_id]

    async def teardown(self, pod: PodNetworkRequest) -> None:
        # the leases are the record of an attachment: taken before anything is made, returned after it is gone
        held = await self._held(pod)
        if not held:
            log.debug("pod %s: not attached to bridge %s", pod.sandbox_id, self.bridge)
            return
        await self._detacher.submit(self._detach_item(pod, held))
        await self._leases.release(self.bridge, pod.sandbox_id)
        log.info("pod %s: detached from bridge %s", pod.sandbox_id, self.bridge)

    async def attached(self, pod: PodNetworkRequest) -> bool:
        return bool(await self._held(pod))

    async def attached_sandboxes(self) -> set[str]:
        return {lease.sandbox_id for lease in await self._leases.leases(self.bridge)}

    async def check(self, pod: PodNetworkRequest) -> None:
        held = await self._held(pod)
        if not held:
            raise errors.FailedPrecondition(f"pod {pod.sandbox_id} is not attached to bridge {self.bridge}")
        net = await self.network()
        addresses = []
        for ip in held:
            subnet = next((s for s in net.subnets if ipaddress.ip_address(ip) in s), None)
            if subnet is not None:
                addresses.append(f"{ip}/{subnet.prefixlen}")
        await self._helper.call(self._request("check", net, pod, addresses=addresses,
                                              portMappings=[pm.to_json() for pm in pod.port_mappings]))

    async def status(self) -> NetworkStatus:
        """Ready when a pod could be attached now. Nothing is created: the bridge and its table appear with the
        first pod, so Status (called every few seconds by the kubelet, and by tests) has no side effects."""
        try:
            net = await self.network()
        except errors.CrispError as exc:
            return NetworkStatus(False, NOT_READY_REASON, f"crisp bridge {self.bridge}: {exc}")
        problem = await asyncio.to_thread(_bridge_problem, self.bridge, net.subnets)
        if problem:
            return NetworkStatus(False, NOT_READY_REASON, f"crisp bridge {self.bridge}: {problem}")
        return NetworkStatus(True)

    async def remove_network(self) -> None:
        """Delete the bridge and its nftables table (FailedPrecondition while pods are attached)."""
        leases = await self._leases.leases(self.bridge)
        if leases:
            raise errors.FailedPrecondition(f"bridge {self.bridge}: {len(leases)} address(es) still leased")
        await self._helper.call({"op": "destroy", "network": BridgeNetwork(bridge=self.bridge, subnets=()).to_json()})


# CAP_NET_ADMIN (linux/capability.h): links, addresses, routes and nftables all need it
CAP_NET_ADMIN = 12


def _bridge_problem(bridge: str, subnets: tuple[IPNetwork, ...] = ()) -> str:
    """Why pods could not be attached to the bridge now ("" when they could); reads /proc and /sys only."""
    if nft_binary_path() is None:
        return "the nft tool (Debian package nftables) is not installed"
    try:
        status = Path("/proc/self/status").read_text()
        cap_eff = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)
    except (OSError, StopIteration, ValueError):
        cap_eff = 0
    if not cap_eff & (1 << CAP_NET_ADMIN):
        return "crispd lacks CAP_NET_ADMIN"
    link = Path("/sys/class/net", bridge)
    if link.exists() and not (link / "bridge").is_dir():
        return f"network interface {bridge} exists and is not a bridge"
    return pod_cidr_conflict(bridge, subnets)


def pod_cidr_conflict(bridge: str, subnets: tuple[IPNetwork, ...]) -> str:
    """Why the pod CIDR cannot be the bridge's: a host route sends part of it elsewhere ("" when none does)."""
    routes = host_routes() if subnets else []
    for subnet in subnets:
        others = sorted({iface for network, iface in routes if iface != bridge and _inside(network, subnet)})
        if others:
            return (f"the pod CIDR {subnet} is also routed through {', '.join(others)}: pod addresses would be "
                    "unreachable (another network, such as a CNI bridge, uses it; remove it or set [network] pod_cidr)")
    return ""


# /proc/net/ipv6_route flags (linux/ipv6_route.h; the same bit in /proc/net/route): a blackhole, unreachable or
# prohibit route, which sends nothing anywhere
RTF_REJECT = 0x0200


def host_routes() -> list[tuple[IPNetwork, str]]:
    """The destinations of the host's routes (IPv4 main table, every IPv6 table) with their interfaces, from /proc;
    reject routes left out."""
    routes: list[tuple[IPNetwork, str]] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            iface, dest, _gw, flags, _ref, _use, _metric, mask, *_ = line.split()
            if int(flags, 16) & RTF_REJECT:
                continue
            address4 = ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(dest), "little"))
            prefix = bin(int(mask, 16)).count("1")
            routes.append((ipaddress.ip_network(f"{address4}/{prefix}", strict=False), iface))
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/ipv6_route").read_text().splitlines():
            dest, prefix_hex, *_, flags, iface = line.split()
            if int(flags, 16) & RTF_REJECT:
                continue
            address6 = ipaddress.IPv6Address(int(dest, 16))
            routes.append((ipaddress.ip_network(f"{address6}/{int(prefix_hex, 16)}", strict=False), iface))
    return routes


def _inside(network: IPNetwork, subnet: IPNetwork) -> bool:
    """Whether a route to `network` takes traffic for some of `subnet` (a less specific route, like the default
    one, does not: the bridge's own route wins)."""
    return network.version == subnet.version and network.prefixlen >= subnet.prefixlen and \
        network.subnet_of(subnet)  # type: ignore[arg-type]
