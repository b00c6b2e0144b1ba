"""Pod networking seen from the CRI: build the network from the config, translate CRI messages for it.

`runtime.network` knows nothing of the CRI; this module turns a PodSandboxConfig into a `PodNetworkRequest`, a
`NetworkResult` into a PodSandboxNetworkStatus, and a `NetworkStatus` into the NetworkReady condition.
"""

from __future__ import annotations

from pathlib import Path

from cri import api as cri
from cri.config import Config
from cri.store.db import Store
from cri.store.leases import SqliteLeaseStore
from runtime.network.bridge import BridgeBackend
from runtime.network.cni import CniBackend
from runtime.network.helper_client import HelperRunner
from runtime.network.manager import NetworkManager
from runtime.network.types import DNSConfig, NetworkResult, NetworkStatus, PodNetworkRequest, PortMapping

# the settings key UpdateRuntimeConfig stores the kubelet's pod CIDR under
POD_CIDR_SETTING = "pod_cidr"

_PROTOCOLS = {cri.TCP: "tcp", cri.UDP: "udp", cri.SCTP: "sctp"}


async def effective_pod_cidr(config: Config, store: Store) -> str:
    """The pod CIDR the bridge uses: the config's, else the kubelet's, else "" (the bridge's default)."""
    return config.network.pod_cidr or await store.get_setting(POD_CIDR_SETTING) or ""


def build_network(config: Config, store: Store) -> NetworkManager:
    """The pod network for crispd: its CNI cache lives under the root dir (it must survive reboots with the pods'
    records), the leases in the store."""
    net = config.network
    helper = HelperRunner(timeout=net.timeout_seconds)

    async def pod_cidr() -> str:
        return await effective_pod_cidr(config, store)

    bridge = BridgeBackend(leases=SqliteLeaseStore(store), pod_cidr=pod_cidr, helper=helper, bridge=net.bridge,
                           mtu=net.mtu, masquerade=net.masquerade)
    cni = CniBackend(cache_dir=Path(config.root) / "network" / "cni", config_dir=net.cni_config_dir,
                     bin_dirs=tuple(net.cni_bin_dirs), timeout=net.timeout_seconds,
                     localnet_guard=lambda: helper.call({"op": "localnet_guard", "table": net.bridge}))
    return NetworkManager(bridge=bridge, cni=cni, helper=helper, cni_only=net.backend == "cni")


def pod_network_request(sandbox_id: str, netns: str, config: cri.PodSandboxConfig) -> PodNetworkRequest:
    """What the network needs of a pod; port mappings without a host port are not hostPorts and are left out.
    Bad values raise InvalidArgument."""
    mappings = tuple(
        PortMapping(container_port=pm.container_port, host_port=pm.host_port,
                    protocol=_PROTOCOLS.get(pm.protocol, "tcp"), host_ip=pm.host_ip)
        for pm in config.port_mappings if pm.host_port
    )
    dns = config.dns_config
    return PodNetworkRequest(
        sandbox_id=sandbox_id, netns=netns, name=config.metadata.name, namespace=config.metadata.namespace,
        uid=config.metadata.uid, port_mappings=mappings,
        dns=DNSConfig(servers=tuple(dns.servers), searches=tuple(dns.searches), options=tuple(dns.options)),
    )


def pod_network_status(result: NetworkResult | None) -> cri.PodSandboxNetworkStatus:
    """PodSandboxStatus's network: the primary IP and the others (none for host-network pods)."""
    ips = result.pod_ips if result is not None else []
    if not ips:
        return cri.PodSandboxNetworkStatus()
    return cri.PodSandboxNetworkStatus(ip=ips[0], additional_ips=[cri.PodIP(ip=ip) for ip in ips[1:]])


def network_ready_condition(status: NetworkStatus) -> cri.RuntimeCondition:
    return cri.RuntimeCondition(type="NetworkReady", status=status.ready, reason=status.reason,
                                message=status.message)
