"""The CNI backend with Debian's containernetworking-plugins (bridge, host-local, portmap, loopback, tuning).

Each test writes its own conflist: its own bridge `crispc<hex>`, network name, subnet, host-local data dir and
crisp cache dir. The plugins' iptables chains are per container and go with DEL, except portmap's shared top-level
chains (CNI-HOSTPORT-*), which the fixture removes again when they were not there before the test.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

from runtime import errors
from runtime.network.cni import DEFAULT_BIN_DIRS, CniBackend, find_plugin
from runtime.network.types import NetworkError, NetworkResult, PodNetworkRequest, PortMapping
from tests.integration.netutil import (
    Netns,
    delete_link,
    free_port,
    free_subnet4,
    host_links,
    http_get,
    iptables_nat,
    namespaces,
    need_root_and_tools,
    remove_portmap_globals,
    remove_rules_of,
    unique,
    wait_for,
)

pytestmark = pytest.mark.root
T = TypeVar("T")
class CniEnv:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bridge = unique("crispc")
        self.name = unique("crispnet")
        self.subnet = free_subnet4()
        self.gateway = str(self.subnet.network_address + 1)
        self.conf_dir = tmp / "net.d"
        self.conf_dir.mkdir(parents=True)
        self.ipam_dir = tmp / "ipam"
        self.cache_dir = tmp / "cache"
        self.loop = asyncio.new_event_loop()
        self.sandboxes: set[str] = set()
        self.write_conflist()
        self.backend = self.new_backend()

    def conflist(self, *extra_plugins: dict[str, Any]) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": True, "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": str(self.subnet)}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.ipam_dir)}},
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
                *extra_plugins,
            ],
        }

    def write_conflist(self, *extra_plugins: dict[str, Any], name: str = "10-crisp.conflist") -> None:
        (self.conf_dir / name).write_text(json.dumps(self.conflist(*extra_plugins)))

    def new_backend(self) -> CniBackend:
        return CniBackend(cache_dir=self.cache_dir, config_dir=str(self.conf_dir), bin_dirs=DEFAULT_BIN_DIRS,
                          timeout=60.0)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def pod(self, ns: Netns, *ports: PortMapping) -> PodNetworkRequest:
        sid = unique("cni") + "0" * 53
        self.sandboxes.add(sid)
        return PodNetworkRequest(sandbox_id=sid, netns=ns.path, name=ns.name, namespace="default", uid=sid[:8],
                                 port_mappings=ports)

    def setup(self, pod: PodNetworkRequest) -> NetworkResult:
        return self.run(self.backend.setup(pod))

    def teardown(self, pod: PodNetworkRequest) -> None:
        self.run(self.backend.teardown(pod))

    def ports(self) -> list[str]:
        out = subprocess.run(["ip", "-j", "link", "show", "master", self.bridge], capture_output=True, text=True,
                             check=False).stdout
        return [link["ifname"] for link in json.loads(out or "[]")]

    def leased(self) -> list[str]:
        d = self.ipam_dir / self.name
        if not d.exists():
            return []
        return sorted(n for n in os.listdir(d) if n != "lock" and not n.startswith("last_reserved_ip"))

    def assert_clean(self, *, masquerade_left_for: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        assert self.ports() == []
        assert self.leased() == []
        if self.cache_dir.exists():
            assert list(self.cache_dir.iterdir()) == []
        rules = iptables_nat()
        assert [sid for sid in self.sandboxes if sid in rules] == sorted(masquerade_left_for)

    def close(self) -> None:
        try:
            for sid in self.sandboxes:
                try:
                    self.run(self.backend.teardown(PodNetworkRequest(sandbox_id=sid, netns="")))
                except (errors.CrispError, NetworkError):
                    pass
        finally:
            remove_rules_of(self.sandboxes)
            delete_link(self.bridge)
            self.loop.close()


@pytest.fixture
def cni(tmp_path: Path) -> Iterator[CniEnv]:
    need_root_and_tools("iptables", "iptables-save")
    if find_plugin("bridge", DEFAULT_BIN_DIRS) is None:
        pytest.skip("needs Debian's containernetworking-plugins")
    had_portmap = "CNI-HOSTPORT-DNAT" in iptables_nat()
    env = CniEnv(tmp_path)
    try:
        yield env
    finally:
        env.close()
        if not had_portmap:
            remove_portmap_globals()
    assert env.bridge not in host_links()


def test_pods_reach_each_other_the_bridge_and_host_ports(cni: CniEnv, tmp_path: Path) -> None:
    port = free_port()
    with namespaces() as make:
        a, b = make(), make()
        pod_a = cni.pod(a, PortMapping(container_port=80, host_port=port))
        pod_b = cni.pod(b)
        result_a, result_b = cni.setup(pod_a), cni.setup(pod_b)
        ip_a, ip_b = result_a.pod_ips[0], result_b.pod_ips[0]
        assert result_a.backend == "cni" and result_a.network == cni.name
        assert ipaddress.ip_address(ip_a) in cni.subnet and ip_a != ip_b
        assert result_a.ips[0].gateway == cni.gateway
        links = {link["ifname"]: link for link in json.loads(a.run("ip", "-j", "link").stdout)}
        assert "UP" in links["lo"]["flags"]  # the loopback plugin ran too
        assert "UP" in links["eth0"]["flags"]

        a.httpd(tmp_path / "a", "cni pod a")
        assert wait_for(lambda: b.http_get(ip_a, 80), what="pod b -> pod a") == "cni pod a"
        # hostPort (portmap): loopback and a host address
        assert http_get("127.0.0.1", port) == "cni pod a"
        assert http_get(cni.gateway, port) == "cni pod a"
        assert b.http_get(cni.gateway, port) == "cni pod a"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"bridge address reached"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer((cni.gateway, 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            assert b.http_get(cni.gateway, server.server_address[1], "/") == "bridge address reached"
        finally:
            server.shutdown()
            server.server_close()

        # CHECK with the cached result (portmap's CHECK wrongly wants IPv6 rules for IPv4-only pods,
        # containernetworking/plugins#819, so only the pod without hostPorts is checked)
        cni.run(cni.backend.check(pod_b))
        cni.teardown(pod_a)
        cni.teardown(pod_b)
        assert "eth0" not in a.links()
        with pytest.raises(OSError):
            http_get("127.0.0.1", port, timeout=1.0)
    cni.assert_clean()


def test_ptp_plugin(cni: CniEnv, tmp_path: Path) -> None:
    """Debian's ptp plugin (a routed veth per pod, no bridge) with host-local and portmap."""
    (cni.conf_dir / "10-crisp.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": cni.name,
        "plugins": [
            {"type": "ptp", "ipMasq": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": str(cni.subnet)}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(cni.ipam_dir)}},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ]}))
    port = free_port()
    with namespaces() as make:
        a, b = make(), make()
        pod_a = cni.pod(a, PortMapping(container_port=80, host_port=port))
        pod_b = cni.pod(b)
        result_a, result_b = cni.setup(pod_a), cni.setup(pod_b)
        ip_a = result_a.pod_ips[0]
        host_ends = {i.name for r in (result_a, result_b) for i in r.interfaces if not i.sandbox}
        assert len(host_ends) == 2 and host_ends <= set(host_links())
        a.httpd(tmp_path / "a", "ptp pod a")
        assert wait_for(lambda: b.http_get(ip_a, 80), what="pod b -> pod a over ptp") == "ptp pod a"
        assert http_get("127.0.0.1", port) == "ptp pod a"
        cni.teardown(pod_a)
        cni.teardown(pod_b)
        assert not host_ends & set(host_links())
    cni.assert_clean()


def test_check_reports_a_broken_attachment(cni: CniEnv) -> None:
    with namespaces() as make:
        a = make()
        pod = cni.pod(a)
        with pytest.raises(errors.FailedPrecondition):
            cni.run(cni.backend.check(pod))
        cni.setup(pod)
        cni.run(cni.backend.check(pod))
        assert a.run("ip", "route", "del", "default").returncode == 0
        with pytest.raises(NetworkError, match="CNI plugin bridge CHECK failed"):
            cni.run(cni.backend.check(pod))
        cni.teardown(pod)
    cni.assert_clean()


def test_del_after_a_restart_and_with_the_namespace_gone(cni: CniEnv) -> None:
    with namespaces() as make:
        a, b = make(), make()
        pod_a = cni.pod(a, PortMapping(container_port=80, host_port=free_port()))
        pod_b = cni.pod(b)
        cni.setup(pod_a)
        cni.setup(pod_b)
        assert len(cni.leased()) == 2
        # the conflist changes afterwards: DEL still uses the config the pods were added with
        cni.write_conflist({"type": "no-such-plugin"})
        cni.backend = cni.new_backend()  # a restarted crispd: only the cache on disk is left
        cni.teardown(pod_a)
        assert len(cni.leased()) == 1
    # pod b's namespace is gone now (the namespaces block removed it): DEL passes an empty CNI_NETNS, and the
    # plugins release what they can: the address, portmap's rules; the bridge plugin's masquerade rules stay, as
    # it finds the pod's addresses only in the namespace (the reason to tear down before unpinning it). Its veth
    # goes with the namespace, which the kernel cleans up asynchronously (CI at load once still saw it at the end)
    wait_for(lambda: cni.ports() == [], 30, what="the kernel to remove pod b's veth with its namespace")
    cni.teardown(pod_b)
    cni.teardown(pod_b)  # and again: nothing to do
    cni.assert_clean(masquerade_left_for={pod_b.sandbox_id})


def test_a_plugin_failing_midway_leaves_nothing(cni: CniEnv) -> None:
    # tuning fails on an unknown sysctl, after bridge (veth, address, masquerade) and portmap (DNAT) did their work
    cni.write_conflist({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.crisp_no_such_key": "1"}})
    with namespaces() as make:
        a = make()
        pod = cni.pod(a, PortMapping(container_port=80, host_port=free_port()))
        with pytest.raises(NetworkError, match="CNI plugin tuning ADD failed"):
            cni.setup(pod)
        assert "eth0" not in a.links()
    cni.assert_clean()


def test_status_and_config_choice(cni: CniEnv) -> None:
    assert cni.run(cni.backend.status()).ready
    assert cni.run(cni.backend.configured())
    # the lexically first file decides: a broken one in front makes the network not ready, and says why
    (cni.conf_dir / "01-broken.conf").write_text("{ not json")
    status = cni.run(cni.backend.status())
    assert not status.ready and status.reason == "NetworkPluginNotReady"
    assert "01-broken.conf" in status.message and "not valid JSON" in status.message
    (cni.conf_dir / "01-broken.conf").unlink()
    cni.write_conflist({"type": "crisp-missing-plugin"}, name="05-missing.conflist")
    status = cni.run(cni.backend.status())
    assert not status.ready and "crisp-missing-plugin" in status.message
    with namespaces() as make, pytest.raises(errors.FailedPrecondition, match="crisp-missing-plugin"):
        cni.setup(cni.pod(make()))
    (cni.conf_dir / "05-missing.conflist").unlink()
    # a single-plugin .conf works too
    single = {"cniVersion": "0.4.0", "name": cni.name, **cni.conflist()["plugins"][0]}
    (cni.conf_dir / "00-single.conf").write_text(json.dumps(single))
    with namespaces() as make:
        pod = cni.pod(make())
        result = cni.setup(pod)
        assert ipaddress.ip_address(result.pod_ips[0]) in cni.subnet
        cni.run(cni.backend.check(pod))
        cni.teardown(pod)
    cni.assert_clean()
    for f in cni.conf_dir.iterdir():
        f.unlink()
    assert not cni.run(cni.backend.configured())
    status = cni.run(cni.backend.status())
    assert not status.ready and "no CNI network config" in status.message
