"""crispd's Status reports pod networking: the built-in bridge, or the node's CNI config (over the real socket)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from runtime.network.cni import DEFAULT_BIN_DIRS, find_plugin
from tests.cri.crispd import Crispd
from tests.cri.pods import pod_config, running_pods
from tests.integration.netutil import free_subnet4, host_links, unique


def _network_condition(daemon: Crispd) -> cri.RuntimeCondition:
    conditions = {c.type: c for c in daemon.runtime.Status(cri.StatusRequest()).status.conditions}
    return conditions["NetworkReady"]


def test_bridge_network_is_ready_without_creating_anything(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("nft") is None:
        pytest.skip("needs root and nft")
    bridge = unique("crispt")
    # a subnet nothing on this host routes (the default 10.88.0.0/16 may be another runtime's here)
    daemon = Crispd(tmp_path, config=f'[network]\nbridge = "{bridge}"\npod_cidr = "{free_subnet4(16)}"\n'
                                     f'cni_config_dir = "{tmp_path / "net.d"}"\n')
    daemon.start()
    try:
        condition = _network_condition(daemon)
        assert condition.status is True, condition
        assert bridge not in host_links()  # Status has no side effects: the bridge comes with the first pod
    finally:
        assert daemon.stop() == 0
    assert daemon.slow_callbacks() == [], daemon.log()


def test_a_pod_cidr_routed_elsewhere_makes_the_bridge_network_not_ready(tmp_path: Path) -> None:
    """Another interface with a route into the pod CIDR (a CNI bridge left on the same subnet, say) would take the
    traffic for the pods' addresses: Status says so instead of pods that nothing can reach."""
    if os.geteuid() != 0 or shutil.which("nft") is None:
        pytest.skip("needs root and nft")
    bridge, other = unique("crispt"), unique("crispo")
    subnet = free_subnet4(16)
    daemon = Crispd(tmp_path, config=f'[network]\nbridge = "{bridge}"\npod_cidr = "{subnet}"\n'
                                     f'cni_config_dir = "{tmp_path / "net.d"}"\n').start()
    try:
        subprocess.run(["ip", "link", "add", other, "type", "bridge"], check=True)
        try:
            subprocess.run(["ip", "address", "add", f"{subnet[256]}/24", "dev", other], check=True)
            subprocess.run(["ip", "link", "set", other, "up"], check=True)
            condition = _network_condition(daemon)
            assert condition.status is False, condition
            assert condition.reason == "NetworkPluginNotReady"
            assert f"pod CIDR {subnet} is also routed through {other}" in condition.message, condition.message
        finally:
            subprocess.run(["ip", "link", "delete", other], check=True)
        assert _network_condition(daemon).status is True
    finally:
        assert daemon.stop() == 0
    assert bridge not in host_links()


def test_a_broken_cni_config_makes_the_network_not_ready(tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    (conf_dir / "10-broken.conflist").write_text("{ nope")
    daemon = Crispd(tmp_path, config=f'[network]\ncni_config_dir = "{conf_dir}"\n').start()
    try:
        condition = _network_condition(daemon)
        assert condition.status is False
        assert condition.reason == "NetworkPluginNotReady"
        assert "10-broken.conflist" in condition.message and "not valid JSON" in condition.message
        # a valid config whose plugins exist makes it ready, without a restart
        (conf_dir / "10-broken.conflist").unlink()
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "crisp-test-plugin").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "crisp-test-plugin").chmod(0o755)
        (conf_dir / "10-ok.conflist").write_text(json.dumps(
            {"cniVersion": "1.0.0", "name": "ok", "plugins": [{"type": "crisp-test-plugin"}]}))
        assert _network_condition(daemon).status is False  # not in the configured bin dirs
    finally:
        assert daemon.stop() == 0
    again = Crispd(tmp_path, name="again",
                   config=f'[network]\ncni_config_dir = "{conf_dir}"\ncni_bin_dirs = ["{tmp_path / "bin"}"]\n').start()
    try:
        assert _network_condition(again).status is True
    finally:
        assert again.stop() == 0
    assert daemon.slow_callbacks() == [] and again.slow_callbacks() == [], daemon.log() + again.log()


def test_cni_only_is_not_ready_until_a_config_appears_then_used_without_a_restart(tmp_path: Path) -> None:
    """`backend = "cni"` (a kind node, where kindnet writes its conflist after the node started): NetworkReady is
    false and pods are refused, never put on the built-in bridge; the config is picked up once it is there."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if find_plugin("ptp", DEFAULT_BIN_DIRS) is None:
        pytest.skip("needs Debian's containernetworking-plugins")
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    with running_pods(tmp_path, network=f'backend = "cni"\ncni_config_dir = "{conf_dir}"\n') as pods:
        condition = _network_condition(pods.daemon)
        assert condition.status is False and condition.reason == "NetworkPluginNotReady"
        assert "cni config uninitialized" in condition.message and str(conf_dir) in condition.message
        with pytest.raises(grpc.RpcError) as refused:
            pods.run(pod_config("early"))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert pods.bridge not in host_links()  # never the built-in bridge
        subnet = free_subnet4(24)
        (conf_dir / "10-kindnet.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": unique("crispnet"), "plugins": [
                {"type": "ptp", "ipMasq": False,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": str(subnet)}]],
                          "dataDir": str(tmp_path / "ipam")}},
            ]}))
        assert _network_condition(pods.daemon).status is True
        sandbox = pods.run(pod_config("late"))
        status = pods.daemon.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox))
        assert ipaddress.ip_address(status.status.network.ip) in subnet
