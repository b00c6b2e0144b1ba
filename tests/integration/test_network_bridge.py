"""The built-in bridge network against the real kernel: veths, addresses, routes, nftables, traffic between pods.

Each test has its own bridge (`crispt<hex>`, which also names its nftables table), its own subnet that overlaps
nothing on this host, its own store, and pod namespaces `crisp-t<hex>`; all of them are removed at the end, and the
end checks that no veth, rule or lease of the test is left.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cri.store.db import Store
from cri.store.leases import SqliteLeaseStore
from runtime import errors
from runtime.network import nft
from runtime.network.bridge import BridgeBackend, host_veth_name
from runtime.network.helper_client import HelperRunner, HelperTimeout
from runtime.network.ipam import gateway
from runtime.network.types import NetworkResult, PodNetworkRequest, PortMapping
from tests.integration.netutil import (
    Netns,
    delete_link,
    free_port,
    free_subnet4,
    free_subnet6,
    host_links,
    http_get,
    namespaces,
    need_root_and_tools,
    udp_ask,
    unique,
    wait_for,
)

pytestmark = pytest.mark.root
T = TypeVar("T")


class BridgeEnv:
    """A bridge network of its own on a store of its own, driven from one event loop."""

    def __init__(self, tmp: Path, pod_cidr: str) -> None:
        self.tmp = tmp
        self.bridge = unique("crispt")
        self.pod_cidr = pod_cidr
        self.loop = asyncio.new_event_loop()
        self.store = Store(tmp / "crisp.db")
        self.run(self.store.open())
        self.backend = self.new_backend()
        self.sandboxes: set[str] = set()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def new_backend(self, timeout: float = 60.0) -> BridgeBackend:
        async def pod_cidr() -> str:
            return self.pod_cidr

        return BridgeBackend(leases=SqliteLeaseStore(self.store), pod_cidr=pod_cidr,
                             helper=HelperRunner(timeout=timeout), bridge=self.bridge)

    def pod(self, ns: Netns, *ports: PortMapping, sandbox_id: str | None = None) -> PodNetworkRequest:
        sid = sandbox_id or unique("pod") + "0" * 53
        self.sandboxes.add(sid)
        return PodNetworkRequest(sandbox_id=sid, netns=ns.path, name=ns.name, namespace="default", uid=sid[:8],
                                 port_mappings=ports)

    def setup(self, pod: PodNetworkRequest) -> NetworkResult:
        return self.run(self.backend.setup(pod))

    def teardown(self, pod: PodNetworkRequest) -> None:
        self.run(self.backend.teardown(pod))

    def leases(self) -> list[str]:
        return [lease.ip for lease in self.run(SqliteLeaseStore(self.store).leases(self.bridge))]

    def veths(self) -> list[str]:
        names = {host_veth_name(self.bridge, sid) for sid in self.sandboxes}
        return [name for name in host_links() if name in names]

    def rules(self) -> int:
        return nft.hostport_rule_count(self.bridge)

    @property
    def gateway(self) -> str:
        return str(gateway(ipaddress.ip_network(self.pod_cidr.split(",")[0])).ip)

    def close(self) -> None:
        try:
            for sid in self.sandboxes:
                self.run(self.backend.teardown(PodNetworkRequest(sandbox_id=sid, netns="")))
            self.run(self.backend.remove_network())
            self.run(self.backend._helper.close())
        finally:
            # whatever failed above, nothing of this test stays on the host
            for name in self.veths():
                delete_link(name)
            subprocess.run(["nft", "delete", "table", "inet", self.bridge], capture_output=True, check=False)
            delete_link(self.bridge)
            self.run(self.store.close())
            self.loop.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[BridgeEnv]:
    need_root_and_tools("nft")
    e = BridgeEnv(tmp_path, str(free_subnet4()))
    try:
        yield e
    finally:
        e.close()
    assert e.bridge not in host_links()


def assert_clean(env: BridgeEnv) -> None:
    assert env.veths() == []
    assert env.rules() == 0
    assert env.leases() == []


def test_two_pods_reach_each_other_and_the_bridge(env: BridgeEnv, tmp_path: Path) -> None:
    with namespaces() as make:
        a, b = make(), make()
        pod_a, pod_b = env.pod(a), env.pod(b)
        result_a, result_b = env.setup(pod_a), env.setup(pod_b)
        ip_a, ip_b = result_a.pod_ips[0], result_b.pod_ips[0]
        assert ip_a != ip_b
        subnet = ipaddress.ip_network(env.pod_cidr)
        assert ipaddress.ip_address(ip_a) in subnet and ipaddress.ip_address(ip_b) in subnet
        assert result_a.ips[0].gateway == env.gateway
        assert {"lo", "eth0"} <= set(a.links())
        links = {link["ifname"]: link for link in json.loads(a.run("ip", "-j", "link").stdout)}
        assert "UP" in links["lo"]["flags"] and "UP" in links["eth0"]["flags"]
        assert f"default via {env.gateway}" in a.run("ip", "route").stdout

        a.httpd(tmp_path / "a", "hello from a")
        assert wait_for(lambda: b.http_get(ip_a, 80), what="pod b -> pod a") == "hello from a"

        # a pod reaches the bridge address: a server on the host, bound to the gateway address only
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f"host saw {self.client_address[0]}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer((env.gateway, 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            port = server.server_address[1]
            assert b.http_get(env.gateway, port, "/") == f"host saw {ip_b}"
        finally:
            server.shutdown()
            server.server_close()
        env.run(env.backend.check(pod_a))
        env.teardown(pod_a)
        env.teardown(pod_b)
        assert "eth0" not in a.links()
    assert_clean(env)


def test_host_port_on_loopback_host_address_and_from_pods(env: BridgeEnv, tmp_path: Path) -> None:
    port = free_port()
    with namespaces() as make:
        a, b = make(), make()
        pod_a = env.pod(a, PortMapping(container_port=80, host_port=port))
        ip_a = env.setup(pod_a).pod_ips[0]
        pod_b = env.pod(b)
        env.setup(pod_b)
        a.httpd(tmp_path / "a", "served by a")
        wait_for(lambda: b.http_get(ip_a, 80), what="httpd in pod a")
        assert env.rules() == 1
        # from the host: loopback (nat OUTPUT + route_localnet + SNAT) and a host address (the bridge's)
        assert http_get("127.0.0.1", port) == "served by a"
        assert http_get(env.gateway, port) == "served by a"
        # from another pod, and from the pod itself (hairpin), through the host address
        assert b.http_get(env.gateway, port) == "served by a"
        assert a.http_get(env.gateway, port) == "served by a"
        env.run(env.backend.check(pod_a))
        env.teardown(pod_a)
        assert env.rules() == 0
        with pytest.raises(OSError):
            http_get("127.0.0.1", port, timeout=1.0)
        env.teardown(pod_b)
    assert_clean(env)


def test_traffic_leaving_the_pod_cidr_is_masqueraded(env: BridgeEnv) -> None:
    """An "outside" host made here: a namespace behind a veth of its own, on a subnet outside the pod CIDR. The
    pod reaches it through the host's forwarding, and it sees the host's address, not the pod's (without the
    masquerade it could not even answer: it has no route to the pod CIDR)."""
    link = unique("crispx")
    outside_net = free_subnet4(prefixlen=30)
    host_ip, outside_ip = str(outside_net.network_address + 1), str(outside_net.network_address + 2)
    with namespaces() as make:
        a, outside = make(), make()
        try:
            for argv in (["ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", outside.name],
                         ["ip", "addr", "add", f"{host_ip}/30", "dev", link],
                         ["ip", "link", "set", link, "up"]):
                subprocess.run(argv, check=True)
            for argv in (["ip", "addr", "add", f"{outside_ip}/30", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"],
                         ["ip", "link", "set", "lo", "up"]):
                assert outside.run(*argv).returncode == 0
            code = ("import socket\n"
                    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                    "s.bind(('0.0.0.0', 8080)); s.listen()\n"
                    "while True:\n"
                    "    c, peer = s.accept()\n"
                    "    c.recv(1024)\n"
                    "    body = peer[0].encode()\n"
                    "    c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s' % (len(body), body))\n"
                    "    c.close()\n")
            outside.start(sys.executable, "-c", code)
            pod = env.pod(a)
            ip_a = env.setup(pod).pod_ips[0]
            seen = wait_for(lambda: a.http_get(outside_ip, 8080, "/"), what="the outside namespace")
            assert seen == host_ip and seen != ip_a
            env.teardown(pod)
        finally:
            delete_link(link)
    assert_clean(env)


def test_udp_and_host_ip_mappings(env: BridgeEnv) -> None:
    udp_port, tcp_port = free_port(), free_port()
    with namespaces() as make:
        a = make()
        pod = env.pod(a, PortMapping(container_port=5353, host_port=udp_port, protocol="udp"),
                      PortMapping(container_port=8080, host_port=tcp_port, protocol="tcp", host_ip=env.gateway))
        env.setup(pod)
        a.udp_echo(5353)
        assert wait_for(lambda: udp_ask("127.0.0.1", udp_port, b"ping"), what="UDP hostPort") == b"echo:ping"
        assert udp_ask(env.gateway, udp_port, b"pong") == b"echo:pong"
        a.start("/bin/busybox", "nc", "-l", "-p", "8080", "-e", "/bin/busybox", "echo", "tcp-ok")

        def nc_once(host: str) -> str:
            import socket
            with socket.create_connection((host, tcp_port), timeout=2) as s:
                return s.recv(100).decode().strip()

        # the TCP mapping names the bridge address: reachable there, and not on loopback
        assert wait_for(lambda: nc_once(env.gateway), what="TCP hostPort on host IP") == "tcp-ok"
        with pytest.raises(OSError):
            nc_once("127.0.0.1")
        env.teardown(pod)
    assert_clean(env)


def test_a_udp_host_port_moves_to_the_next_pod(env: BridgeEnv) -> None:
    """A client that keeps sending from one socket reaches the new pod, not the conntrack entry of the old one."""
    import socket

    port = free_port()
    with namespaces() as make, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(0.5)

        def ask(data: bytes) -> bytes:
            client.sendto(data, ("127.0.0.1", port))
            return client.recvfrom(2048)[0]

        a, b = make(), make()
        pod_a = env.pod(a, PortMapping(container_port=5353, host_port=port, protocol="udp"))
        env.setup(pod_a)
        a.udp_echo(5353)
        assert wait_for(lambda: ask(b"one"), what="pod a") == b"echo:one"
        env.teardown(pod_a)
        pod_b = env.pod(b, PortMapping(container_port=5353, host_port=port, protocol="udp"))
        env.setup(pod_b)
        b.udp_echo(5353)
        assert wait_for(lambda: ask(b"two"), timeout=5, what="pod b through the same client socket") == b"echo:two"
        env.teardown(pod_b)
    assert_clean(env)


def test_dual_stack_pods_reach_each_other_over_ipv6(tmp_path: Path) -> None:
    need_root_and_tools("nft")
    # an IPv6 pod network turns on IPv6 forwarding, which stops a host from taking router advertisements: this
    # test gives the host back the setting it found
    forwarding = Path("/proc/sys/net/ipv6/conf/all/forwarding")
    found = forwarding.read_text()
    e = BridgeEnv(tmp_path, f"{free_subnet4()},{free_subnet6()}")
    try:
        with namespaces() as make:
            a, b = make(), make()
            ra, rb = e.setup(e.pod(a)), e.setup(e.pod(b))
            assert [ip.version for ip in ra.ips] == [4, 6]
            assert len(rb.pod_ips) == 2
            a.httpd(tmp_path / "a", "v6 hello")
            assert wait_for(lambda: b.http_get(ra.pod_ips[1], 80), what="v6") == "v6 hello"
            for sid in list(e.sandboxes):
                e.teardown(PodNetworkRequest(sandbox_id=sid, netns=""))
        assert_clean(e)
    finally:
        e.close()
        forwarding.write_text(found)


def test_restart_keeps_leases(env: BridgeEnv) -> None:
    with namespaces() as make:
        a, b, c = make(), make(), make()
        pod_a, pod_b = env.pod(a), env.pod(b)
        ips = {env.setup(pod_a).pod_ips[0], env.setup(pod_b).pod_ips[0]}
        # a restart: a new store connection and backend, the old ones gone
        env.run(env.backend._helper.close())
        env.run(env.store.close())
        env.store = Store(env.tmp / "crisp.db")
        env.run(env.store.open())
        env.backend = env.new_backend()
        assert sorted(env.leases()) == sorted(ips)
        assert env.run(env.backend.attached_sandboxes()) == {pod_a.sandbox_id, pod_b.sandbox_id}
        pod_c = env.pod(c)
        ip_c = env.setup(pod_c).pod_ips[0]
        assert ip_c not in ips
        # the new backend detaches a pod the old one attached, and its address is free again
        ip_a = env.run(_ip_of(env, pod_a))
        env.teardown(pod_a)
        assert sorted(env.leases()) == sorted((ips | {ip_c}) - {ip_a})
        assert host_veth_name(env.bridge, pod_a.sandbox_id) not in host_links()
        env.teardown(pod_b)
        env.teardown(pod_c)
    assert_clean(env)


async def _ip_of(env: BridgeEnv, pod: PodNetworkRequest) -> str:
    leases = await SqliteLeaseStore(env.store).leases(env.bridge)
    return next((lease.ip for lease in leases if lease.sandbox_id == pod.sandbox_id), "")


def test_a_hundred_pods_up_and_down_leave_nothing(env: BridgeEnv) -> None:
    with namespaces() as make:
        spaces = [make() for _ in range(100)]
        pods = [env.pod(ns, PortMapping(container_port=80, host_port=20000 + i)) for i, ns in enumerate(spaces)]

        async def all_up() -> list[NetworkResult]:
            sem = asyncio.Semaphore(8)

            async def one(pod: PodNetworkRequest) -> NetworkResult:
                async with sem:
                    return await env.backend.setup(pod)

            return await asyncio.gather(*(one(p) for p in pods))

        results = env.run(all_up())
        ips = [r.pod_ips[0] for r in results]
        assert len(set(ips)) == 100
        assert len(env.veths()) == 100
        assert env.rules() == 100
        assert sorted(env.leases()) == sorted(ips)

        async def all_down() -> None:
            sem = asyncio.Semaphore(8)

            async def one(pod: PodNetworkRequest) -> None:
                async with sem:
                    await env.backend.teardown(pod)

            await asyncio.gather(*(one(p) for p in pods))

        env.run(all_down())
        assert_clean(env)
        for ns in spaces[:5]:
            assert ns.links() == ["lo"]
        addr = json.loads(subprocess.run(["ip", "-j", "addr", "show", env.bridge], capture_output=True, text=True,
                                         check=True).stdout)
        assert [a["ifname"] for a in addr] == [env.bridge]


def test_setup_failing_after_the_veth_and_rules_leaves_nothing(env: BridgeEnv) -> None:
    with namespaces() as make:
        a = make()
        # a default route already in the pod's namespace: the last step (routes) fails, after veth and rules
        assert a.run("ip", "route", "add", "blackhole", "default").returncode == 0
        pod = env.pod(a, PortMapping(container_port=80, host_port=free_port()))
        with pytest.raises(errors.FailedPrecondition, match="default IPv4 route"):
            env.setup(pod)
        assert_clean(env)
        assert "eth0" not in a.links()


def test_setup_failures_before_the_pod_is_made(env: BridgeEnv, tmp_path: Path) -> None:
    with namespaces() as make:
        a = make()
        # an eth0 already there (this kernel has no dummy links: a veth pair inside the namespace)
        assert a.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "crisptpeer").returncode == 0
        with pytest.raises(errors.FailedPrecondition, match="already exists"):
            env.setup(env.pod(a))
        assert_clean(env)
        # a namespace that does not exist
        ghost = env.pod(a)
        ghost = PodNetworkRequest(sandbox_id=ghost.sandbox_id, netns=str(tmp_path / "no-such-netns"))
        with pytest.raises(errors.NotFound):
            env.setup(ghost)
        # not a namespace at all
        (tmp_path / "plain-file").write_text("")
        with pytest.raises(errors.FailedPrecondition):
            env.setup(PodNetworkRequest(sandbox_id=ghost.sandbox_id, netns=str(tmp_path / "plain-file")))
        # a hostPort bound to an IPv6 host address on an IPv4-only network is refused up front
        with pytest.raises(errors.InvalidArgument):
            env.setup(env.pod(make(), PortMapping(container_port=80, host_port=free_port(), host_ip="::1")))
        assert_clean(env)


def test_a_helper_killed_midway_leaves_nothing(env: BridgeEnv) -> None:
    with namespaces() as make:
        for timeout in (0.05, 0.15, 0.3, 0.5):
            a = make()
            env.backend = env.new_backend(timeout=timeout)
            pod = env.pod(a, PortMapping(container_port=80, host_port=free_port()))
            try:
                env.setup(pod)
            except HelperTimeout:
                # killed at some point of its work: the backend cleaned up after it
                assert_clean(env)
            else:
                env.teardown(pod)
            env.run(env.backend._helper.close())
        env.backend = env.new_backend()
    assert_clean(env)


def test_a_cancelled_setup_leaves_nothing(env: BridgeEnv) -> None:
    with namespaces() as make:
        for delay in (0.01, 0.1, 0.2, 0.4):
            a = make()
            pod = env.pod(a, PortMapping(container_port=80, host_port=free_port()))

            async def cancel_after(seconds: float, p: PodNetworkRequest = pod) -> bool:
                task = asyncio.ensure_future(env.backend.setup(p))
                await asyncio.sleep(seconds)
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    return True
                return False

            if env.run(cancel_after(delay)):
                assert_clean(env)
            else:
                env.teardown(pod)
    assert_clean(env)


def test_concurrent_teardowns_go_together_and_take_only_their_pods(env: BridgeEnv) -> None:
    with namespaces() as make:
        spaces = [make() for _ in range(6)]
        pods = [env.pod(ns, PortMapping(container_port=80, host_port=free_port())) for ns in spaces]
        stays = pods.pop()
        for pod in (*pods, stays):
            env.setup(pod)
        requests: list[dict[str, Any]] = []
        call = env.backend._helper.call

        async def recording(request: dict[str, Any], time_limit: float | None = None) -> dict[str, Any]:
            requests.append(request)
            return await call(request, time_limit)

        env.backend._helper.call = recording  # type: ignore[method-assign]

        async def all_down() -> None:
            await asyncio.gather(*(env.backend.teardown(p) for p in pods))

        env.run(all_down())
        # each pod once, in fewer helper requests than pods (those that came while one was in flight went together)
        assert sorted(p["sandboxId"] for r in requests for p in r["pods"]) == sorted(p.sandbox_id for p in pods)
        assert all(r["op"] == "teardown" for r in requests) and len(requests) < len(pods)
        assert env.veths() == [host_veth_name(env.bridge, stays.sandbox_id)]
        assert env.rules() == 1 and len(env.leases()) == 1
        assert "eth0" in spaces[-1].links() and all(ns.links() == ["lo"] for ns in spaces[:-1])
        env.teardown(stays)
    assert_clean(env)


def test_teardown_is_idempotent_and_survives_a_gone_namespace(env: BridgeEnv) -> None:
    a = Netns()
    try:
        pod = env.pod(a, PortMapping(container_port=80, host_port=free_port()))
        env.setup(pod)
    finally:
        a.close()
    env.teardown(pod)
    env.teardown(pod)
    assert_clean(env)


def test_setup_again_replaces_the_attachment(env: BridgeEnv) -> None:
    with namespaces() as make:
        a = make()
        pod = env.pod(a, PortMapping(container_port=80, host_port=free_port()))
        first = env.setup(pod)
        second = env.setup(pod)
        assert first.pod_ips == second.pod_ips  # the lease it holds is kept
        assert env.rules() == 1 and len(env.veths()) == 1
        env.teardown(pod)
    assert_clean(env)


def test_check_names_what_is_missing(env: BridgeEnv) -> None:
    with namespaces() as make:
        a = make()
        pod = env.pod(a)
        with pytest.raises(errors.FailedPrecondition, match="not attached"):
            env.run(env.backend.check(pod))
        env.setup(pod)
        env.run(env.backend.check(pod))
        a.run("ip", "addr", "flush", "dev", "eth0")
        with pytest.raises(errors.FailedPrecondition, match="lacks"):
            env.run(env.backend.check(pod))
        delete_link(host_veth_name(env.bridge, pod.sandbox_id))
        with pytest.raises(errors.FailedPrecondition, match=r"veth \w+ is missing"):
            env.run(env.backend.check(pod))
        env.teardown(pod)
    assert_clean(env)


def test_status_has_no_side_effects_and_says_what_is_wrong(env: BridgeEnv) -> None:
    status = env.run(env.backend.status())
    assert status.ready, status
    # Status creates nothing: the bridge and its table come with the first pod
    assert env.bridge not in host_links()
    assert not nft.table_exists(env.bridge)
    # a link of the bridge's name that is no bridge: not ready, and the message says why
    peer = unique("crisptp")
    subprocess.run(["ip", "link", "add", env.bridge, "type", "veth", "peer", "name", peer], check=True)
    try:
        status = env.run(env.backend.status())
        assert not status.ready
        assert status.reason == "NetworkPluginNotReady"
        assert "not a bridge" in status.message
    finally:
        delete_link(env.bridge)
    env.pod_cidr = "10.1.2.3/31"
    status = env.run(env.backend.status())
    assert not status.ready and "too small" in status.message


def base_rules(env: BridgeEnv) -> list[str]:
    """The base chains' rules as nft lists them, with their handles."""
    listing = subprocess.run(["nft", "-a", "list", "table", "inet", env.bridge], capture_output=True, text=True,
                             check=True).stdout
    chain, rules = "", []
    for line in listing.splitlines():
        words = line.split()
        if words[:1] == ["chain"]:
            chain = words[1]
        elif "# handle" in line and chain in ("prerouting", "output", "postrouting", "localnet"):
            rules.append(f"{chain}: {line.strip()}")
    return rules


def test_base_rules_are_written_again_only_when_changed_or_for_another_config(env: BridgeEnv) -> None:
    with namespaces() as make:
        first = env.pod(make())
        env.setup(first)
        written = base_rules(env)
        assert any(env.pod_cidr in rule and "masquerade" in rule for rule in written)
        more = [env.pod(make()) for _ in range(4)]

        async def together() -> None:  # in several helpers: none of them writes them again either
            await asyncio.gather(*(env.backend.setup(p) for p in more))

        env.run(together())
        env.setup(env.pod(make()))
        assert base_rules(env) == written  # as they were: not written again (same handles)
        subprocess.run(["nft", "flush", "chain", "inet", env.bridge, "postrouting"], check=True)
        env.setup(env.pod(make()))
        again = base_rules(env)
        assert again != written and [r.split(" # handle")[0] for r in again if r.startswith("postrouting")] == [
            r.split(" # handle")[0] for r in written if r.startswith("postrouting")]
        old_cidr = env.pod_cidr
        env.pod_cidr = f"{old_cidr},{free_subnet6()}"  # another config: dual-stack
        env.setup(env.pod(make()))
        assert any(env.pod_cidr.split(",")[1] in rule for rule in base_rules(env))
        for sid in list(env.sandboxes):
            env.teardown(PodNetworkRequest(sandbox_id=sid, netns=""))
    assert_clean(env)
