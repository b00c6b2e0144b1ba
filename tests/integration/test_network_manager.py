"""The network crispd uses: the bridge until a CNI config appears, and each pod torn down by what attached it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from cri.config import Config, NetworkConfig
from cri.network import build_network
from cri.store.db import Store
from runtime.network.cni import DEFAULT_BIN_DIRS, find_plugin
from runtime.network.types import PodNetworkRequest
from tests.integration.netutil import (
    delete_link,
    free_subnet4,
    host_links,
    iptables_nat,
    namespaces,
    need_root_and_tools,
    remove_rules_of,
    unique,
)

pytestmark = pytest.mark.root


def test_bridge_then_cni_and_each_pod_detached_by_its_backend(tmp_path: Path) -> None:
    need_root_and_tools("nft", "iptables")
    if find_plugin("bridge", DEFAULT_BIN_DIRS) is None:
        pytest.skip("needs Debian's containernetworking-plugins")
    bridge, cni_bridge, net_name = unique("crispt"), unique("crispc"), unique("crispnet")
    conf_dir = tmp_path / "net.d"
    config = dataclasses.replace(Config(), root=str(tmp_path / "root"), network=NetworkConfig(
        pod_cidr=str(free_subnet4()), bridge=bridge, cni_config_dir=str(conf_dir)))
    cni_subnet = free_subnet4()
    sandboxes: list[str] = []

    async def scenario() -> None:
        store = Store(tmp_path / "root" / "crisp.db")
        await store.open()
        network = build_network(config, store)
        try:
            with namespaces() as make:
                a, b = make(), make()
                pod_a = PodNetworkRequest(sandbox_id=unique("mgr") + "0" * 56, netns=a.path)
                pod_b = PodNetworkRequest(sandbox_id=unique("mgr") + "0" * 56, netns=b.path)
                sandboxes.extend([pod_a.sandbox_id, pod_b.sandbox_id])
                assert (await network.backend()).name == "bridge"
                result_a = await network.setup(pod_a)
                assert result_a.backend == "bridge" and result_a.network == bridge
                # a CNI config appears: new pods use it, the bridge pod stays where it is
                conf_dir.mkdir()
                (conf_dir / "10-net.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": net_name,
                    "plugins": [{"type": "bridge", "bridge": cni_bridge, "isGateway": True,
                                 "ipam": {"type": "host-local", "ranges": [[{"subnet": str(cni_subnet)}]],
                                          "dataDir": str(tmp_path / "ipam")}}]}))
                assert (await network.backend()).name == "cni"
                assert (await network.status()).ready
                result_b = await network.setup(pod_b)
                assert result_b.backend == "cni" and result_b.network == net_name
                assert await network.attached_sandboxes() == {pod_a.sandbox_id, pod_b.sandbox_id}
                await network.check(pod_a)
                await network.check(pod_b)
                # setup again (a retried RunPodSandbox): the old attachment goes first, so pod a moves to CNI
                result_a2 = await network.setup(pod_a)
                assert result_a2.backend == "cni"
                assert not await network.bridge.attached(pod_a)
                for pod in (pod_a, pod_b):
                    await network.teardown(pod)
                    await network.teardown(pod)
                assert await network.attached_sandboxes() == set()
                assert "eth0" not in a.links() and "eth0" not in b.links()
        finally:
            await network.bridge.remove_network()
            await network.close()
            await store.close()

    try:
        asyncio.run(scenario())
    finally:
        delete_link(cni_bridge)
        delete_link(bridge)
        subprocess.run(["nft", "delete", "table", "inet", bridge], capture_output=True, check=False)
        remove_rules_of(set(sandboxes))
    assert bridge not in host_links() and cni_bridge not in host_links()
    assert not any(sid in iptables_nat() for sid in sandboxes)
