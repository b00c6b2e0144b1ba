"""What a pod network is asked for and what it answers: plain records, the backend seam, and their JSON forms.

The records are runtime-level (no CRI types): `cri/network.py` translates a CRI PodSandboxConfig into a
`PodNetworkRequest` and a `NetworkResult` back into a PodSandboxNetworkStatus. Every record converts to and from
plain JSON-able dicts, because results travel between processes (the netns helper) and are kept on disk and in
the store.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime import errors

PROTOCOLS = ("tcp", "udp", "sctp")
# the interface name a pod's network device gets inside its namespace (CNI_IFNAME)
POD_IFNAME = "eth0"


class NetworkError(Exception):
    """Pod networking failed for a reason that is neither bad input nor a wrong state (a plugin failed, the kernel
    refused): INTERNAL for the caller, with a message that says which pod and which step."""


@dataclass(frozen=True)
class PortMapping:
    """A hostPort: traffic to host_ip:host_port (any local address when host_ip is empty) goes to the pod."""

    container_port: int
    host_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise errors.InvalidArgument(f"port mapping: protocol {self.protocol!r} is not one of {PROTOCOLS}")
        for name, port in (("container port", self.container_port), ("host port", self.host_port)):
            if not 0 < port < 65536:
                raise errors.InvalidArgument(f"port mapping: {name} {port} is out of range 1-65535")
        if self.host_ip:
            try:
                ipaddress.ip_address(self.host_ip)
            except ValueError:
                raise errors.InvalidArgument(f"port mapping: host IP {self.host_ip!r} is not an IP address") from None

    def host_ip_version(self) -> int | None:
        """4 or 6 for a given host IP; None for "every local address" (empty, 0.0.0.0 or ::)."""
        if not self.host_ip:
            return None
        addr = ipaddress.ip_address(self.host_ip)
        return None if addr.is_unspecified else addr.version

    def to_json(self) -> dict[str, Any]:
        return {"containerPort": self.container_port, "hostPort": self.host_port, "protocol": self.protocol,
                "hostIP": self.host_ip}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PortMapping:
        return cls(container_port=int(data["containerPort"]), host_port=int(data["hostPort"]),
                   protocol=str(data.get("protocol", "tcp")), host_ip=str(data.get("hostIP", "")))


@dataclass(frozen=True)
class DNSConfig:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"servers": list(self.servers), "searches": list(self.searches), "options": list(self.options)}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> DNSConfig:
        data = data or {}
        # CNI results name them nameservers/search/options; CNI's runtimeConfig and crisp name them like the CRI
        return cls(servers=tuple(data.get("servers", data.get("nameservers", ()))),
                   searches=tuple(data.get("searches", data.get("search", ()))),
                   options=tuple(data.get("options", ())))


@dataclass(frozen=True)
class PodNetworkRequest:
    """Everything a backend needs to attach one pod to the network (and, later, to detach it)."""

    sandbox_id: str
    # the pod's pinned network namespace (a bind mount of /proc/<pid>/ns/net); may be gone at teardown
    netns: str
    name: str = ""
    namespace: str = ""
    uid: str = ""
    port_mappings: tuple[PortMapping, ...] = ()
    dns: DNSConfig = field(default_factory=DNSConfig)

    def __post_init__(self) -> None:
        if not self.sandbox_id or "/" in self.sandbox_id or self.sandbox_id in (".", ".."):
            raise errors.InvalidArgument(f"pod network: bad sandbox id {self.sandbox_id!r}")
        seen: set[tuple[str, int, str]] = set()
        for pm in self.port_mappings:
            key = (pm.protocol, pm.host_port, pm.host_ip)
            if key in seen:
                where = f"{pm.host_ip or '*'}:{pm.host_port}/{pm.protocol}"
                raise errors.InvalidArgument(f"pod {self.sandbox_id}: host port {where} is mapped twice")
            seen.add(key)

    def to_json(self) -> dict[str, Any]:
        return {"sandboxId": self.sandbox_id, "netns": self.netns, "name": self.name, "namespace": self.namespace,
                "uid": self.uid, "portMappings": [pm.to_json() for pm in self.port_mappings],
                "dns": self.dns.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PodNetworkRequest:
        return cls(sandbox_id=str(data["sandboxId"]), netns=str(data["netns"]), name=str(data.get("name", "")),
                   namespace=str(data.get("namespace", "")), uid=str(data.get("uid", "")),
                   port_mappings=tuple(PortMapping.from_json(p) for p in data.get("portMappings", ())),
                   dns=DNSConfig.from_json(data.get("dns")))


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    # the netns path for an interface inside the pod; empty for a host-side interface
    sandbox: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.mac:
            out["mac"] = self.mac
        if self.sandbox:
            out["sandbox"] = self.sandbox
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Interface:
        return cls(name=str(data["name"]), mac=str(data.get("mac", "")), sandbox=str(data.get("sandbox", "")))


@dataclass(frozen=True)
class IPConfig:
    """One address of the pod: `address` in CIDR form (10.88.0.5/16), its gateway, and the index of its interface
    in `NetworkResult.interfaces` (None when the plugin did not say)."""

    address: str
    gateway: str = ""
    interface: int | None = None

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.address).ip)

    @property
    def version(self) -> int:
        return ipaddress.ip_interface(self.address).version

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address}
        if self.gateway:
            out["gateway"] = self.gateway
        if self.interface is not None:
            out["interface"] = self.interface
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IPConfig:
        interface = data.get("interface")
        return cls(address=str(data["address"]), gateway=str(data.get("gateway", "")),
                   interface=None if interface is None else int(interface))


@dataclass(frozen=True)
class Route:
    dst: str
    gw: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"dst": self.dst, "gw": self.gw} if self.gw else {"dst": self.dst}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Route:
        return cls(dst=str(data["dst"]), gw=str(data.get("gw", "")))


@dataclass(frozen=True)
class NetworkResult:
    """What a pod got: in the shape of a CNI 1.0 result, plus which backend (and network) made it."""

    backend: str
    network: str
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNSConfig = field(default_factory=DNSConfig)

    @property
    def pod_ips(self) -> list[str]:
        """The pod's addresses without prefix length, primary first (as PodSandboxStatus reports them)."""
        return [ip.ip for ip in self.ips]

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "network": self.network,
                "interfaces": [i.to_json() for i in self.interfaces], "ips": [ip.to_json() for ip in self.ips],
                "routes": [r.to_json() for r in self.routes], "dns": self.dns.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkResult:
        return cls(backend=str(data["backend"]), network=str(data["network"]),
                   interfaces=tuple(Interface.from_json(i) for i in data.get("interfaces", ())),
                   ips=tuple(IPConfig.from_json(ip) for ip in data.get("ips", ())),
                   routes=tuple(Route.from_json(r) for r in data.get("routes", ())),
                   dns=DNSConfig.from_json(data.get("dns")))


@dataclass(frozen=True)
class NetworkStatus:
    """The CRI's NetworkReady condition: `reason` is a CamelCase word and `message` a sentence when not ready."""

    ready: bool
    reason: str = ""
    message: str = ""


NOT_READY_REASON = "NetworkPluginNotReady"


class NetworkBackend(Protocol):
    """One way of giving pods a network (the built-in bridge, CNI plugins).

    Calls for the same sandbox never overlap (the caller serialises them); calls for different sandboxes may.
    """

    @property
    def name(self) -> str:
        """"bridge" or "cni"."""
        ...

    async def setup(self, pod: PodNetworkRequest) -> NetworkResult:
        """Attach the pod; on failure nothing of it is left behind. An attachment left by an earlier attempt is
        replaced."""
        ...

    async def teardown(self, pod: PodNetworkRequest) -> None:
        """Detach the pod and return its addresses; a no-op for a pod that is not (or no longer) attached. The
        pod's netns may already be gone."""
        ...

    async def check(self, pod: PodNetworkRequest) -> None:
        """Raise (FailedPrecondition, NetworkError) unless the pod's attachment is complete and as set up."""
        ...

    async def attached(self, pod: PodNetworkRequest) -> bool:
        """Whether the backend holds a record of attaching the pod (then teardown has work to do)."""
        ...

    async def attached_sandboxes(self) -> set[str]:
        """The sandbox ids the backend holds attachment records of."""
        ...

    async def status(self) -> NetworkStatus:
        """Whether pods can be attached now."""
        ...
