"""Figures: pod network setup (and teardown) time per pod, the built-in bridge vs the CNI bridge plugin.

Run as root from the repository: `.venv/bin/python -m tests.bench.network_setup [--pods 50]`. Pods are attached one
after the other (latency, not throughput), each in its own `ip netns add crisp-t<hex>` namespace; everything the
run makes is removed at the end. Prints the median and 90th percentile of each variant in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from cri.store.db import Store
from cri.store.leases import SqliteLeaseStore
from runtime.network.bridge import BridgeBackend
from runtime.network.cni import DEFAULT_BIN_DIRS, CniBackend
from runtime.network.helper_client import HelperRunner
from runtime.network.types import NetworkBackend, PodNetworkRequest, PortMapping
from tests.integration.netutil import (
    Netns,
    delete_link,
    free_subnet4,
    iptables_nat,
    remove_portmap_globals,
    unique,
)


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"median {statistics.median(ordered) * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms"


async def _measure(backend: NetworkBackend, spaces: list[Netns], ports: bool) -> tuple[list[float], list[float]]:
    pods = [PodNetworkRequest(sandbox_id=unique("bench") + "0" * 55, netns=ns.path, name=ns.name, namespace="bench",
                              uid=ns.name,
                              port_mappings=(PortMapping(80, 30000 + i),) if ports else ())
            for i, ns in enumerate(spaces)]
    up: list[float] = []
    down: list[float] = []
    try:
        for pod in pods:
            t = time.perf_counter()
            await backend.setup(pod)
            up.append(time.perf_counter() - t)
    finally:
        for pod in pods:
            t = time.perf_counter()
            await backend.teardown(pod)
            down.append(time.perf_counter() - t)
    return up, down


async def main(n: int) -> None:
    had_portmap = "CNI-HOSTPORT-DNAT" in iptables_nat()
    spaces = [Netns() for _ in range(n)]
    tmp = Path(tempfile.mkdtemp(prefix="crisp-bench-net-"))
    cleanups: list[Callable[[], Awaitable[None]]] = []
    store = Store(tmp / "crisp.db")
    await store.open()
    try:
        async def builtin(fresh_helpers: bool, ports: bool) -> tuple[list[float], list[float]]:
            bridge = unique("crispb")
            subnet = str(free_subnet4(prefixlen=22))

            async def cidr() -> str:
                return subnet

            # fresh_helpers: every request in a new helper process (what a pod costs without the pool)
            helper = HelperRunner(timeout=60, max_requests=1 if fresh_helpers else 500)
            backend = BridgeBackend(leases=SqliteLeaseStore(store), pod_cidr=cidr, helper=helper, bridge=bridge)

            async def cleanup() -> None:
                await backend.remove_network()
                await helper.close()
                delete_link(bridge)

            cleanups.append(cleanup)
            return await _measure(backend, spaces, ports)

        async def cni(portmap: bool) -> tuple[list[float], list[float]]:
            name, bridge = unique("crispnet"), unique("crispc")
            conf_dir = tmp / name / "net.d"
            conf_dir.mkdir(parents=True)
            plugins: list[dict[str, object]] = [
                {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": str(free_subnet4(prefixlen=22))}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(tmp / name / "ipam")}}]
            if portmap:
                plugins.append({"type": "portmap", "capabilities": {"portMappings": True}, "snat": True})
            (conf_dir / "10-bench.conflist").write_text(
                json.dumps({"cniVersion": "1.0.0", "name": name, "plugins": plugins}))
            backend = CniBackend(cache_dir=tmp / name / "cache", config_dir=str(conf_dir), bin_dirs=DEFAULT_BIN_DIRS)

            async def cleanup() -> None:
                delete_link(bridge)

            cleanups.append(cleanup)
            return await _measure(backend, spaces, portmap)

        variants: list[tuple[str, Callable[[], Awaitable[tuple[list[float], list[float]]]]]] = [
            ("built-in bridge", lambda: builtin(fresh_helpers=False, ports=False)),
            ("built-in bridge + 1 hostPort", lambda: builtin(fresh_helpers=False, ports=True)),
            ("built-in bridge, a new helper per request", lambda: builtin(fresh_helpers=True, ports=False)),
            ("CNI bridge + host-local (+ loopback)", lambda: cni(portmap=False)),
            ("CNI bridge + host-local + portmap, 1 hostPort", lambda: cni(portmap=True)),
        ]
        print(f"pod network setup/teardown, {n} pods one after the other (2 shared cores: expect noise)")
        for label, run in variants:
            up, down = await run()
            print(f"{label:48s} setup    {_ms(up)}")
            print(f"{'':48s} teardown {_ms(down)}")
    finally:
        for cleanup in cleanups:
            await cleanup()
        await store.close()
        for ns in spaces:
            ns.close()
        if not had_portmap:
            remove_portmap_globals()
        await asyncio.to_thread(shutil.rmtree, tmp, True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=50)
    asyncio.run(main(parser.parse_args().pods))
