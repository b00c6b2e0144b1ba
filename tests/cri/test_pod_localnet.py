"""A pod must not reach the host's loopback-only sockets (the CVE-2020-8558 class).

`route_localnet=1` on the pods' bridge (set for hostPorts on 127.0.0.1: crisp's bridge always, Debian's portmap
plugin with `snat`) lets the host route packets whose destination is 127.0.0.0/8 when they arrive on it. A pod
with CAP_NET_RAW sends one: an Ethernet frame to the bridge's MAC, IPv4 to 127.0.0.1. The test plays that pod from
the pod's own network namespace (the one crispd made), talks only to 127.0.0.1 and to addresses of that pod
network, and checks that the datagram never reaches a UDP socket the host bound to 127.0.0.1, while a hostPort on
127.0.0.1 (a DNAT flow the other way) keeps working.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri import api as cri
from runtime.network.cni import DEFAULT_BIN_DIRS, find_plugin
from tests.cri.pods import Pods, pod_config, running_pods
from tests.integration.netutil import free_port, remove_portmap_globals, remove_rules_of, unique

pytestmark = pytest.mark.root

# sends one UDP datagram as a raw Ethernet frame out of eth0: argv = dst MAC, src IP, dst IP, port, payload
RAW_SENDER = r"""
import socket, struct, sys
dst_mac, src, dst, port, payload = bytes.fromhex(sys.argv[1].replace(":", "")), sys.argv[2], sys.argv[3], \
    int(sys.argv[4]), sys.argv[5].encode()
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src),
                     socket.inet_aton(dst))
total = sum(struct.unpack("!10H", header))
total = (total & 0xFFFF) + (total >> 16)
total = (total & 0xFFFF) + (total >> 16)
header = header[:10] + struct.pack("!H", ~total & 0xFFFF) + header[12:]
s.send(dst_mac + s.getsockname()[4] + b"\x08\x00" + header + udp)
"""

# a TCP server in the pod's namespace: answers "pod" to one connection
POD_SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
c.sendall(b"pod")
c.close()
"""


def _pod(pods: Pods, host_port: int) -> tuple[str, str]:
    """A pod with a hostPort on 127.0.0.1:host_port -> 8080; its id and IP."""
    config = pod_config("net", port_mappings=[cri.PortMapping(protocol=cri.TCP, container_port=8080,
                                                             host_port=host_port, host_ip="127.0.0.1")])
    pod_id = pods.run(config)
    ip = pods.daemon.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status.network.ip
    return pod_id, ip


def _netns(pods: Pods, pod_id: str) -> str:
    return str(pods.daemon.state / "sandboxes" / pod_id / "ns" / "net")


def _in_pod(netns: str, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={netns}", sys.executable, "-I", "-c", script, *args],
                          capture_output=True, text=True, timeout=20)


def _route_localnet(link: str) -> str:
    return Path(f"/proc/sys/net/ipv4/conf/{link}/route_localnet").read_text().strip()


def _mac(link: str) -> str:
    out = subprocess.run(["ip", "-j", "link", "show", link], capture_output=True, text=True, check=True).stdout
    return str(json.loads(out)[0]["address"])


def _received(sock: socket.socket) -> bytes | None:
    try:
        return sock.recv(100)
    except TimeoutError:
        return None


def _check_loopback_is_out_of_reach(pods: Pods, bridge: str) -> None:
    host_port = free_port()
    pod_id, pod_ip = _pod(pods, host_port)
    netns = _netns(pods, pod_id)
    gateway = str(ipaddress.ip_network(f"{pod_ip}/24", strict=False).network_address + 1)
    assert _route_localnet(bridge) == "1"  # the precondition of the attack
    mac = _mac(bridge)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as loopback, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as on_gateway:
        loopback.bind(("127.0.0.1", 0))
        on_gateway.bind((gateway, 0))
        for s in (loopback, on_gateway):
            s.settimeout(2)
        # the control: the same kind of frame, to the bridge's own address, arrives
        sent = _in_pod(netns, RAW_SENDER, mac, pod_ip, gateway, str(on_gateway.getsockname()[1]), "to-gateway")
        assert sent.returncode == 0, sent.stderr
        assert _received(on_gateway) == b"to-gateway"
        # the attack: to 127.0.0.1, from the pod's address and from a spoofed loopback address
        for source in (pod_ip, "127.0.0.1"):
            sent = _in_pod(netns, RAW_SENDER, mac, source, "127.0.0.1", str(loopback.getsockname()[1]), "leak")
            assert sent.returncode == 0, sent.stderr
            assert _received(loopback) is None, f"a pod reached a socket bound to 127.0.0.1 (source {source})"
    # a hostPort on 127.0.0.1 is a DNAT flow: it still works, both ways
    server = subprocess.Popen(["nsenter", f"--net={netns}", sys.executable, "-I", "-c", POD_SERVER, "8080"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "listening\n"
        with socket.create_connection(("127.0.0.1", host_port), timeout=5) as conn:
            assert conn.recv(10) == b"pod"
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


def test_a_pod_on_the_builtin_bridge_cannot_reach_loopback_sockets(pods: Pods) -> None:
    _check_loopback_is_out_of_reach(pods, pods.bridge)


class CniPods(Pods):
    """A crispd whose pods go to a CNI network: Debian's bridge plugin, and portmap with snat (which sets
    route_localnet on the bridge)."""

    def __init__(self, base: Path) -> None:
        self.cni_bridge = unique("crispc")
        self.cni_dir = base / "net.d"
        self.cni_dir.mkdir(parents=True)
        super().__init__(base)
        subnet = str(self.subnet)
        (self.cni_dir / "10-crisp.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": unique("crispnet"),
            "plugins": [
                {"type": "bridge", "bridge": self.cni_bridge, "isGateway": True, "ipMasq": True,
                 "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": str(base / "ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            ]}))

    def config_text(self, extra: str = "", network: str = "") -> str:
        return super().config_text(extra, network).replace("/nonexistent/crisp-test-no-cni", str(self.cni_dir))

    def cleanup_host(self) -> None:
        super().cleanup_host()
        subprocess.run(["ip", "link", "delete", self.cni_bridge], capture_output=True, check=False)


@pytest.fixture
def cni_pods(tmp_path: Path) -> Iterator[CniPods]:
    if shutil.which("iptables") is None or find_plugin("portmap", DEFAULT_BIN_DIRS) is None:
        pytest.skip("needs iptables and the CNI plugins (make test installs them)")
    pods = CniPods(tmp_path)
    ids: set[str] = set()
    try:
        with running_pods(tmp_path, pods=pods) as running:
            yield running
            ids = {p.id for p in running.daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items}
    finally:
        remove_rules_of(ids)
        remove_portmap_globals()


def test_a_pod_on_a_cni_bridge_cannot_reach_loopback_sockets(cni_pods: CniPods) -> None:
    _check_loopback_is_out_of_reach(cni_pods, cni_pods.cni_bridge)
    assert os.path.exists(f"/sys/class/net/{cni_pods.cni_bridge}")
