"""crisp's side of the CNI protocol, with recording plugins (no root needed).

The real plugins run in tests/integration/test_network_cni.py; here small plugin programs record exactly what crisp
hands them (environment, stdin) and answer as told, so ordering, prevResult chaining, capability args, caching,
timeouts and error reports are checked precisely.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime import errors
from runtime.network.cni import CniBackend, NetworkList, load_network, parse_result
from runtime.network.types import DNSConfig, NetworkError, PodNetworkRequest, PortMapping

PLUGIN = f"""#!{sys.executable}
import json, os, sys, time
conf = json.load(sys.stdin)
cmd = os.environ["CNI_COMMAND"]
env = {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}
with open(conf.get("log") or "@DEFAULT_LOG@", "a") as f:
    f.write(json.dumps({{"type": conf["type"], "cmd": cmd, "env": env, "conf": conf, "pid": os.getpid()}}) + "\\n")
if cmd in conf.get("sleep_on", ()):
    time.sleep(conf["sleep"])
if cmd in conf.get("fail", ()):
    print(json.dumps({{"cniVersion": conf["cniVersion"], "code": 11, "msg": "told to fail", "details": conf["type"]}}))
    sys.exit(1)
if cmd == "ADD":
    result = conf.get("prevResult") or {{"cniVersion": conf["cniVersion"], "interfaces": [], "ips": []}}
    result["interfaces"].append({{"name": conf["type"], "sandbox": os.environ["CNI_NETNS"]}})
    if conf.get("ip"):
        result["ips"].append({{"address": conf["ip"], "gateway": conf.get("gw", ""),
                               "interface": len(result["interfaces"]) - 1}})
    print(json.dumps(result))
"""

POD = PodNetworkRequest(
    sandbox_id="f" * 64, netns="", name="web", namespace="prod", uid="uid-1",
    port_mappings=(PortMapping(container_port=80, host_port=8080), PortMapping(53, 5353, "udp", "127.0.0.1")),
    dns=DNSConfig(servers=("10.96.0.10",), searches=("prod.svc.cluster.local",), options=("ndots:5",)),
)


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.bin.mkdir()
        for name in ("first", "second", "third", "loopback"):
            path = self.bin / name
            path.write_text(PLUGIN.replace("@DEFAULT_LOG@", str(tmp / "lo.log")))
            path.chmod(0o755)
        self.conf_dir = tmp / "net.d"
        self.conf_dir.mkdir()
        self.log = tmp / "plugins.log"
        self.netns = tmp / "netns"
        self.netns.write_text("")
        self.pod = PodNetworkRequest(**{**POD.__dict__, "netns": str(self.netns)})

    def write(self, plugins: list[dict[str, Any]], version: str = "1.0.0", **extra: Any) -> None:
        for p in plugins:
            p.setdefault("log", str(self.log))
        (self.conf_dir / "10-test.conflist").write_text(
            json.dumps({"cniVersion": version, "name": "testnet", "plugins": plugins, **extra}))

    def backend(self, timeout: float = 20.0) -> CniBackend:
        return CniBackend(cache_dir=self.tmp / "cache", config_dir=str(self.conf_dir),
                          bin_dirs=(str(self.tmp / "nonexistent"), str(self.bin)), timeout=timeout)

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        self.log.unlink()
        return [c for c in calls if c["type"] != "loopback"]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def test_add_chains_results_and_passes_the_protocol(env: Env) -> None:
    env.write([{"type": "first", "ip": "10.1.0.5/24", "gw": "10.1.0.1"},
               {"type": "second", "capabilities": {"portMappings": True, "dns": True}},
               {"type": "third", "capabilities": {"bandwidth": True}}])
    result = asyncio.run(env.backend().setup(env.pod))
    assert result.backend == "cni" and result.network == "testnet"
    assert result.pod_ips == ["10.1.0.5"] and result.ips[0].gateway == "10.1.0.1"
    calls = env.calls()
    assert [(c["type"], c["cmd"]) for c in calls] == [("first", "ADD"), ("second", "ADD"), ("third", "ADD")]
    first, second, third = (c["conf"] for c in calls)
    assert all(c["name"] == "testnet" and c["cniVersion"] == "1.0.0" for c in (first, second, third))
    assert "prevResult" not in first
    assert second["prevResult"]["ips"][0]["address"] == "10.1.0.5/24"
    assert [i["name"] for i in third["prevResult"]["interfaces"]] == ["first", "second"]
    # capability args only for plugins that declare them
    assert "runtimeConfig" not in first and "runtimeConfig" not in third
    assert second["runtimeConfig"] == {
        "portMappings": [{"containerPort": 80, "hostPort": 8080, "protocol": "tcp", "hostIP": ""},
                         {"containerPort": 53, "hostPort": 5353, "protocol": "udp", "hostIP": "127.0.0.1"}],
        "dns": {"servers": ["10.96.0.10"], "searches": ["prod.svc.cluster.local"], "options": ["ndots:5"]},
    }
    environment = calls[0]["env"]
    assert environment["CNI_CONTAINERID"] == "f" * 64
    assert environment["CNI_NETNS"] == str(env.netns)
    assert environment["CNI_IFNAME"] == "eth0"
    assert environment["CNI_PATH"] == f"{env.tmp / 'nonexistent'}:{env.bin}"
    assert environment["CNI_ARGS"] == ("IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web;"
                                       f"K8S_POD_INFRA_CONTAINER_ID={'f' * 64};K8S_POD_UID=uid-1")
    assert (env.tmp / "cache" / f"{'f' * 64}.json").exists()


def test_loopback_runs_first_as_its_own_network(env: Env) -> None:
    env.write([{"type": "first", "ip": "10.1.0.5/24"}])
    asyncio.run(env.backend().setup(env.pod))
    lo = [json.loads(line) for line in (env.tmp / "lo.log").read_text().splitlines()]
    assert [(c["cmd"], c["env"]["CNI_IFNAME"], c["conf"]["name"]) for c in lo] == [("ADD", "lo", "cni-loopback")]
    asyncio.run(env.backend().teardown(env.pod))
    lo = [json.loads(line) for line in (env.tmp / "lo.log").read_text().splitlines()]
    assert [c["cmd"] for c in lo] == ["ADD", "DEL"]


def test_del_after_restart_uses_the_cached_config_and_result(env: Env) -> None:
    env.write([{"type": "first", "ip": "10.1.0.5/24"}, {"type": "second"}])
    asyncio.run(env.backend().setup(env.pod))
    env.calls()
    env.write([{"type": "third"}])  # the config changes while the pod runs
    backend = env.backend()  # a new crispd
    assert asyncio.run(backend.attached(env.pod))
    assert asyncio.run(backend.attached_sandboxes()) == {env.pod.sandbox_id}
    asyncio.run(backend.teardown(env.pod))
    calls = env.calls()
    assert [(c["type"], c["cmd"]) for c in calls] == [("second", "DEL"), ("first", "DEL")]
    assert all(c["conf"]["prevResult"]["ips"][0]["address"] == "10.1.0.5/24" for c in calls)
    assert "runtimeConfig" not in calls[0]["conf"]
    assert not asyncio.run(backend.attached(env.pod))
    assert asyncio.run(backend.attached_sandboxes()) == set()
    asyncio.run(backend.teardown(env.pod))  # nothing cached: nothing to run
    assert env.calls() == []


def test_del_with_the_namespace_gone_passes_an_empty_netns(env: Env) -> None:
    env.write([{"type": "first", "ip": "10.1.0.5/24"}])
    asyncio.run(env.backend().setup(env.pod))
    env.netns.unlink()
    asyncio.run(env.backend().teardown(env.pod))
    assert [c["env"]["CNI_NETNS"] for c in env.calls() if c["cmd"] == "DEL"] == [""]


def test_a_failing_add_is_deleted_and_reported(env: Env) -> None:
    env.write([{"type": "first", "ip": "10.1.0.5/24"}, {"type": "second", "fail": ["ADD"]}, {"type": "third"}])
    with pytest.raises(NetworkError, match=r"CNI plugin second ADD failed: told to fail \(second\) \[code 11\]"):
        asyncio.run(env.backend().setup(env.pod))
    calls = env.calls()
    assert [(c["type"], c["cmd"]) for c in calls] == [
        ("first", "ADD"), ("second", "ADD"), ("third", "DEL"), ("second", "DEL"), ("first", "DEL")]
    assert not (env.tmp / "cache" / f"{'f' * 64}.json").exists()


def test_a_failing_del_keeps_the_cache_for_a_retry(env: Env) -> None:
    env.write([{"type": "first", "ip": "10.1.0.5/24", "fail": ["DEL"]}, {"type": "second"}])
    backend = env.backend()
    asyncio.run(backend.setup(env.pod))
    with pytest.raises(NetworkError, match="first DEL failed"):
        asyncio.run(backend.teardown(env.pod))
    calls = env.calls()
    assert [(c["type"], c["cmd"]) for c in calls][-2:] == [("second", "DEL"), ("first", "DEL")]
    assert asyncio.run(backend.attached(env.pod))
    # the plugin is fixed (its cached config says "fail": the cache is what DEL uses, so rewrite it there)
    cache = env.tmp / "cache" / f"{'f' * 64}.json"
    cache.write_text(cache.read_text().replace('"fail": ["DEL"]', '"fail": []'))
    asyncio.run(backend.teardown(env.pod))
    assert not asyncio.run(backend.attached(env.pod))


def test_a_hanging_plugin_is_killed(env: Env) -> None:
    env.write([{"type": "first", "sleep": 60, "sleep_on": ["ADD"]}])
    with pytest.raises(errors.DeadlineExceeded, match="first ADD did not finish"):
        asyncio.run(env.backend(timeout=1.0).setup(env.pod))
    calls = env.calls()
    add = next(c for c in calls if c["cmd"] == "ADD")
    with pytest.raises(ProcessLookupError):
        os.kill(add["pid"], 0)
    assert not (env.tmp / "cache" / f"{'f' * 64}.json").exists()


def test_check(env: Env) -> None:
    env.write([{"type": "first", "ip": "10.1.0.5/24"}, {"type": "second"}])
    backend = env.backend()
    with pytest.raises(errors.FailedPrecondition):
        asyncio.run(backend.check(env.pod))
    asyncio.run(backend.setup(env.pod))
    env.calls()
    asyncio.run(backend.check(env.pod))
    calls = env.calls()
    assert [(c["type"], c["cmd"]) for c in calls] == [("first", "CHECK"), ("second", "CHECK")]
    assert all(c["conf"]["prevResult"]["ips"][0]["address"] == "10.1.0.5/24" for c in calls)
    asyncio.run(backend.teardown(env.pod))
    # no CHECK before spec 0.4.0, nor when the list disables it
    for version, extra in (("0.3.1", {}), ("1.0.0", {"disableCheck": True})):
        env.write([{"type": "first", "ip": "10.1.0.5/24"}], version=version, **extra)
        asyncio.run(backend.setup(env.pod))
        env.calls()
        asyncio.run(backend.check(env.pod))
        assert env.calls() == []
        asyncio.run(backend.teardown(env.pod))


def test_status(env: Env) -> None:
    backend = env.backend()
    assert not asyncio.run(backend.configured())
    assert not asyncio.run(backend.status()).ready
    env.write([{"type": "first"}, {"type": "missing"}])
    status = asyncio.run(backend.status())
    assert not status.ready and status.reason == "NetworkPluginNotReady" and "missing" in status.message
    env.write([{"type": "first"}])
    assert asyncio.run(backend.status()).ready


def test_config_files(tmp_path: Path) -> None:
    assert load_network(str(tmp_path / "none")) is None
    (tmp_path / "README").write_text("not a config")
    assert load_network(str(tmp_path)) is None
    (tmp_path / "20-b.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "b",
                                                        "plugins": [{"type": "bridge"}]}))
    (tmp_path / "10-a.conf").write_text(json.dumps({"cniVersion": "0.4.0", "name": "a", "type": "ptp",
                                                    "ipam": {"type": "host-local"}}))
    net = load_network(str(tmp_path))
    assert net is not None
    assert (net.name, net.cni_version, net.plugins) == ("a", "0.4.0", ({"type": "ptp",
                                                                         "ipam": {"type": "host-local"}},))
    for bad, why in [({"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}, "'name'"),
                     ({"name": "n", "plugins": [{"type": "x"}]}, "'cniVersion'"),
                     ({"name": "n", "cniVersion": "1.0.0", "plugins": []}, "non-empty"),
                     ({"name": "n", "cniVersion": "1.0.0", "plugins": [{"type": "../x"}]}, "no valid 'type'"),
                     ({"name": "n", "cniVersion": "1.0.0"}, "neither"),
                     ([], "not a JSON object")]:
        with pytest.raises(errors.InvalidArgument, match=why):
            NetworkList.from_json(bad, "f.conflist")


def test_results_of_every_spec_version() -> None:
    v1 = {"cniVersion": "1.0.0",
          "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"},
                         {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/x"}],
          "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1},
                  {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 1}],
          "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.0.0.10"], "search": ["a.b"]}}
    result = parse_result(v1, "net")
    assert result.pod_ips == ["10.1.0.5", "fd00::5"]
    assert result.interfaces[1].sandbox == "/run/netns/x"
    assert result.dns.servers == ("10.0.0.10",) and result.dns.searches == ("a.b",)
    v04 = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.2.0.7/16", "gateway": "10.2.0.1"}]}
    assert parse_result(v04, "net").pod_ips == ["10.2.0.7"]
    v02 = {"cniVersion": "0.2.0", "ip4": {"ip": "10.3.0.9/24", "gateway": "10.3.0.1",
                                          "routes": [{"dst": "0.0.0.0/0", "gw": "10.3.0.1"}]}}
    legacy = parse_result(v02, "net")
    assert legacy.pod_ips == ["10.3.0.9"] and legacy.routes[0].gw == "10.3.0.1"
    with pytest.raises(NetworkError):
        parse_result({"ips": [{"address": "not-an-ip"}]}, "net")
