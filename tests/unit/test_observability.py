"""Pieces of crisp's observability that need no root: the event fan-out, /proc/net/dev parsing, process counting,
CPU rates, the CRI conversions of cgroup stats, and the metrics page's server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cri import api as cri
from cri.events import EventBroker
from cri.metrics import Metrics, StateSnapshot
from cri.metrics_server import MetricsServer
from cri.server import Readiness
from cri.stats import MIN_RATE_NS, CgroupSample, StatsCollector
from cri.usage import cpu_usage, memory_usage, psi
from runtime import errors
from runtime.cgroups import CgroupStats, CpuStats, MemoryStats, Pressure, PsiLine
from runtime.network.netstats import InterfaceCounters, parse_proc_net_dev
from runtime.procstats import count_processes, open_files

PROC_NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed
    lo:     840      10    0    0    0     0          0         0      840      10    0    0    0     0       0       0
  eth0: 1234567     890    3    4    0     0          0         5   765432     321    6    7    0     0       0       0
"""


def test_proc_net_dev() -> None:
    lo, eth0 = parse_proc_net_dev(PROC_NET_DEV)
    assert lo.name == "lo" and lo.rx_bytes == 840
    assert eth0 == InterfaceCounters(name="eth0", rx_bytes=1234567, rx_packets=890, rx_errors=3, rx_dropped=4,
                                     tx_bytes=765432, tx_packets=321, tx_errors=6, tx_dropped=7)
    assert InterfaceCounters.from_json(eth0.to_json()) == eth0
    assert parse_proc_net_dev(PROC_NET_DEV.splitlines()[0] + "\n") == []


def test_open_files_of_this_process() -> None:
    import socket

    with socket.socket() as _:
        fds, sockets = open_files([os.getpid()])
    assert fds >= 4 and sockets >= 1
    assert open_files([2**22 + 12345]) == (0, 0)  # no such process: nothing, no error


def test_count_processes_of_a_missing_cgroup(tmp_path: Path) -> None:
    assert count_processes(tmp_path / "nothing") is None


async def _events_scenario() -> None:
    broker = EventBroker(buffer=2)
    fast, slow = broker.subscribe(), broker.subscribe()
    got: list[int] = []

    async def read() -> None:
        while True:
            got.append(await fast.next())

    reader = asyncio.ensure_future(read())
    for n in range(5):
        broker.publish(n)
        await asyncio.sleep(0)  # the reader runs between events, as RPCs do between state changes
    # the slow one took two events and was dropped at the third; the fast one has them all, in order
    assert got == [0, 1, 2, 3, 4]
    assert broker.subscribers == 1
    with pytest.raises(errors.ResourceExhausted):
        await slow.next()  # what it had queued is gone with it
    # a subscriber blocked handing an event to gRPC is freed when it is dropped
    stuck = broker.subscribe()
    never = asyncio.get_running_loop().create_future()
    sending = asyncio.ensure_future(stuck.send(never))
    await asyncio.sleep(0)
    for n in range(3):
        broker.publish(n)
        await asyncio.sleep(0)
    with pytest.raises(errors.ResourceExhausted):
        await sending
    assert never.cancelled()
    assert got == [0, 1, 2, 3, 4, 0, 1, 2] and broker.subscribers == 1
    broker.close()
    await asyncio.sleep(0)
    with pytest.raises(errors.Unavailable):
        await reader
    slow.close()  # closing a dropped subscription is fine


def test_event_broker() -> None:
    asyncio.run(_events_scenario())


def _sample(usage_usec: int, pressure: Pressure | None = None, memory: MemoryStats | None = None) -> CgroupSample:
    return CgroupSample(timestamp=5, stats=CgroupStats(cpu=CpuStats(usage_usec=usage_usec), cpu_pressure=pressure,
                                                       memory=memory))


def test_cpu_rate_between_samples() -> None:
    collector = StatsCollector(lambda: None, None, 0, 1)  # type: ignore[arg-type,return-value]
    first = collector._with_rate("c1", _sample(1_000_000), 0)
    assert first.nano_cores is None  # one sample: no rate yet
    too_soon = collector._with_rate("c1", _sample(1_000_500), MIN_RATE_NS // 2)
    assert too_soon.nano_cores is None
    second = collector._with_rate("c1", _sample(1_500_000), 2 * MIN_RATE_NS)
    # 0.5 s of CPU over 0.2 s of wall time: 2.5 cores
    assert second.nano_cores == 500_000_000 * 10**9 // (2 * MIN_RATE_NS)
    again = collector._with_rate("c1", _sample(1_500_100), 2 * MIN_RATE_NS + 1)
    assert again.nano_cores == second.nano_cores  # within the window: the last rate stands
    reset = collector._with_rate("c1", _sample(10), 10 * MIN_RATE_NS)  # a new cgroup under the same id
    assert reset.nano_cores is None
    collector.forget_except([])
    assert collector._with_rate("c1", _sample(20), 11 * MIN_RATE_NS).nano_cores is None


def test_cri_usage_sets_only_what_the_host_reports() -> None:
    empty = CgroupSample(timestamp=7)
    cpu, memory = cpu_usage(empty), memory_usage(empty)
    assert cpu.timestamp == memory.timestamp == 7
    assert not cpu.HasField("usage_core_nano_seconds") and not cpu.HasField("psi")
    for field in ("working_set_bytes", "available_bytes", "usage_bytes", "rss_bytes", "page_faults",
                  "major_page_faults"):
        assert not memory.HasField(field)
    pressure = Pressure(some=PsiLine(avg10=1.5, avg60=0.5, avg300=0.25, total=2000), full=None)
    mem = MemoryStats(current=100 << 20, limit=256 << 20, stat={"inactive_file": 30 << 20, "anon": 60 << 20,
                                                                "pgfault": 9, "pgmajfault": 1})
    full = _sample(3_000, pressure, mem)
    cpu, memory = cpu_usage(full), memory_usage(full)
    assert cpu.usage_core_nano_seconds.value == 3_000_000
    assert cpu.psi.Some == cri.PsiData(Total=2_000_000, Avg10=1.5, Avg60=0.5, Avg300=0.25)
    assert not cpu.psi.HasField("Full")
    assert memory.working_set_bytes.value == 70 << 20 and memory.available_bytes.value == 186 << 20
    assert (memory.usage_bytes.value, memory.rss_bytes.value) == (100 << 20, 60 << 20)
    assert (memory.page_faults.value, memory.major_page_faults.value) == (9, 1)
    unlimited = memory_usage(_sample(0, None, MemoryStats(current=10, stat={"inactive_file": 4})))
    assert unlimited.working_set_bytes.value == 6 and not unlimited.HasField("available_bytes")
    assert psi(None) is None


async def _serve_scenario() -> None:
    readiness, metrics = Readiness(), Metrics()
    server = MetricsServer("127.0.0.1:0", metrics, readiness,
                           lambda: StateSnapshot(containers={"running": 2}, pods={"ready": 1}, event_subscribers=1,
                                                 ready=readiness.ready, shims_alive=lambda: 2))
    await server.start()
    try:
        (host, port), = server.addresses

        async def get(path: str, *headers: str) -> bytes:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{''.join(h + chr(13) + chr(10) for h in headers)}\r\n"
                         .encode())
            await writer.drain()
            data = await reader.read()
            writer.close()
            return data

        assert (await get("/healthz")).startswith(b"HTTP/1.1 503 ")
        readiness.set_ready()
        assert (await get("/healthz")).endswith(b"\r\n\r\nok\n")
        page = await get("/metrics?name[]=x")
        head, _, body = page.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in head
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for f in text_string_to_metric_families(body.decode()) for s in f.samples}
        assert values[("crisp_containers", (("state", "running"),))] == 2
        assert values[("crisp_containers", (("state", "exited"),))] == 0
        assert values[("crisp_pods", (("state", "ready"),))] == 1
        assert values[("crisp_shims", ())] == 2 and values[("crisp_ready", ())] == 1
        assert (await get("/nope")).startswith(b"HTTP/1.1 404")
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"garbage\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400")
        writer.close()
    finally:
        await server.close()


def test_metrics_server() -> None:
    asyncio.run(_serve_scenario())


def test_metrics_pull_failures_by_code() -> None:
    metrics = Metrics()
    metrics.observe_image_pull(1.5, None)
    metrics.observe_image_pull(0.1, errors.NotFound("no"))
    metrics.observe_image_pull(0.1, asyncio.CancelledError())
    metrics.observe_image_pull(0.1, RuntimeError("boom"))
    r = metrics.registry
    assert r.get_sample_value("crisp_image_pulls_total") == 4
    assert r.get_sample_value("crisp_image_pull_duration_seconds_count") == 1
    for code in ("NOT_FOUND", "CANCELLED", "INTERNAL"):
        assert r.get_sample_value("crisp_image_pull_failures_total", {"code": code}) == 1


def test_helper_reads_counters_of_its_own_namespace() -> None:
    """The helper's stats request, for the namespace it runs in (entering another one needs root: tests/cri)."""
    request = '{"op": "stats", "netns": ["/proc/self/ns/net", "/nonexistent/crisp-netns"]}\n'
    done = subprocess.run([sys.executable, "-m", "runtime.network.helper"], input=request, capture_output=True,
                          text=True, timeout=60, check=True)
    import json

    reply = json.loads(done.stdout)
    assert reply["ok"], reply
    namespaces = reply["result"]["namespaces"]
    assert "does not exist" in namespaces["/nonexistent/crisp-netns"]["error"]
    own = namespaces["/proc/self/ns/net"]
    if "error" in own:  # setns needs CAP_SYS_ADMIN
        assert os.geteuid() != 0
    else:
        assert "lo" in [i["name"] for i in own["interfaces"]]
