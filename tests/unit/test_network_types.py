"""Pod network records, their JSON forms, the CRI translations, and the hostPort rules (no root needed)."""

from __future__ import annotations

import ipaddress

import pytest

from cri import api as cri
from cri.network import network_ready_condition, pod_network_request, pod_network_status
from runtime import errors
from runtime.network import nft
from runtime.network.bridge import check_bridge_name, host_veth_name
from runtime.network.types import (
    DNSConfig,
    Interface,
    IPConfig,
    NetworkResult,
    NetworkStatus,
    PodNetworkRequest,
    PortMapping,
    Route,
)


def test_port_mappings_are_checked() -> None:
    assert PortMapping(80, 8080).host_ip_version() is None
    assert PortMapping(80, 8080, host_ip="0.0.0.0").host_ip_version() is None
    assert PortMapping(80, 8080, host_ip="::1").host_ip_version() == 6
    for kwargs, why in [({"protocol": "icmp"}, "protocol"), ({"host_ip": "localhost"}, "not an IP"),
                        ({"container_port": 0}, "container port 0"), ({"host_port": 70000}, "host port 70000")]:
        with pytest.raises(errors.InvalidArgument, match=why):
            PortMapping(**{"container_port": 80, "host_port": 8080, **kwargs})  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument, match="mapped twice"):
        PodNetworkRequest(sandbox_id="a", netns="", port_mappings=(PortMapping(80, 8080), PortMapping(81, 8080)))
    # the same host port for two protocols, or two host IPs, is fine
    PodNetworkRequest(sandbox_id="a", netns="", port_mappings=(
        PortMapping(80, 8080), PortMapping(80, 8080, "udp"), PortMapping(80, 8080, host_ip="127.0.0.1")))
    for bad in ("", "../x", "a/b"):
        with pytest.raises(errors.InvalidArgument):
            PodNetworkRequest(sandbox_id=bad, netns="")


def test_json_round_trips() -> None:
    pod = PodNetworkRequest(sandbox_id="s1", netns="/run/x", name="n", namespace="ns", uid="u",
                            port_mappings=(PortMapping(80, 8080, "sctp", "10.0.0.1"),),
                            dns=DNSConfig(servers=("1.1.1.1",), searches=("a",), options=("ndots:2",)))
    assert PodNetworkRequest.from_json(pod.to_json()) == pod
    result = NetworkResult(backend="bridge", network="crisp0",
                           interfaces=(Interface("crispab", "aa:aa:aa:aa:aa:aa"), Interface("eth0", "", "/run/x")),
                           ips=(IPConfig("10.88.0.2/16", "10.88.0.1", 1), IPConfig("fd00::2/64")),
                           routes=(Route("0.0.0.0/0", "10.88.0.1"),), dns=pod.dns)
    assert NetworkResult.from_json(result.to_json()) == result
    assert result.pod_ips == ["10.88.0.2", "fd00::2"]


def test_cri_translations() -> None:
    config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="web", namespace="prod", uid="u-1"),
        port_mappings=[cri.PortMapping(protocol=cri.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1"),
                       cri.PortMapping(protocol=cri.TCP, container_port=80),  # no host port: not a hostPort
                       cri.PortMapping(protocol=cri.SCTP, container_port=9, host_port=9999)],
        dns_config=cri.DNSConfig(servers=["10.96.0.10"], searches=["svc"], options=["ndots:5"]),
    )
    pod = pod_network_request("sid", "/run/crisp/sandboxes/sid/ns/net", config)
    assert (pod.name, pod.namespace, pod.uid, pod.netns) == ("web", "prod", "u-1", "/run/crisp/sandboxes/sid/ns/net")
    assert pod.port_mappings == (PortMapping(53, 5353, "udp", "127.0.0.1"), PortMapping(9, 9999, "sctp"))
    assert pod.dns == DNSConfig(("10.96.0.10",), ("svc",), ("ndots:5",))
    with pytest.raises(errors.InvalidArgument):
        pod_network_request("sid", "", cri.PodSandboxConfig(
            port_mappings=[cri.PortMapping(container_port=80, host_port=8080, host_ip="nope")]))

    status = pod_network_status(NetworkResult(backend="cni", network="n", ips=(
        IPConfig("10.1.0.5/24"), IPConfig("fd00::5/64"))))
    assert status.ip == "10.1.0.5" and [ip.ip for ip in status.additional_ips] == ["fd00::5"]
    assert pod_network_status(None) == cri.PodSandboxNetworkStatus()
    cond = network_ready_condition(NetworkStatus(False, "NetworkPluginNotReady", "no config"))
    assert (cond.type, cond.status, cond.reason, cond.message) == (
        "NetworkReady", False, "NetworkPluginNotReady", "no config")


def test_names() -> None:
    veth = host_veth_name("crisp0", "a" * 64)
    assert veth.startswith("crisp") and len(veth) == 15
    assert veth != host_veth_name("crisp1", "a" * 64)
    check_bridge_name("crisp0")
    check_bridge_name("crispt_0123abcd")
    for bad in ("cni0", "crisp-0", "crisp0123456789ab", "crisp0;drop"):
        with pytest.raises(errors.InvalidArgument):
            check_bridge_name(bad)


def test_hostport_rules_follow_the_families() -> None:
    v4, v6 = ipaddress.ip_interface("10.1.0.5/24"), ipaddress.ip_interface("fd00::5/64")
    rules = nft.pod_commands("crisp0", "sid", [PortMapping(80, 8080), PortMapping(53, 5353, "udp", "10.0.0.1"),
                                               PortMapping(443, 8443, "tcp", "::1")], [v4, v6])
    assert rules == [
        'add rule inet crisp0 hostports meta nfproto ipv4 meta l4proto tcp th dport 8080 '
        'dnat ip to 10.1.0.5:80 comment "crisp:sid"',
        'add rule inet crisp0 hostports meta nfproto ipv6 meta l4proto tcp th dport 8080 '
        'dnat ip6 to [fd00::5]:80 comment "crisp:sid"',
        'add rule inet crisp0 hostports meta nfproto ipv4 ip daddr 10.0.0.1 meta l4proto udp th dport 5353 '
        'dnat ip to 10.1.0.5:53 comment "crisp:sid"',
        'add rule inet crisp0 hostports meta nfproto ipv6 ip6 daddr ::1 meta l4proto tcp th dport 8443 '
        'dnat ip6 to [fd00::5]:443 comment "crisp:sid"',
    ]
    with pytest.raises(errors.InvalidArgument, match="no pod address of its IP family"):
        nft.pod_commands("crisp0", "sid", [PortMapping(80, 8080, host_ip="::1")], [v4])
