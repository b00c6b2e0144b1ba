"""Figures for crisp-shim (run as root: `python -m tests.bench.shim_figures [--executor runc] [--shims 20]`).

- start-to-ready: from the manager's request to the zygote until the shim reported ready (socket listening)
- memory: RSS, PSS and USS of each shim (/proc/<pid>/smaps_rollup) with N containers running
- log throughput: MB/s through the shim into the CRI log, and the shim's CPU%, for `yes` and for 64 KiB lines

Prints figures; asserts nothing (tests/ prove behaviour, this measures it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from cri.shims.manager import ShimManager
from tests.bench.procmem import smaps_rollup
from tests.integration.shim.helpers import ShimEnv, build_busybox_rootfs


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def start_times(env: ShimEnv, manager: ShimManager, count: int) -> list[float]:
    """Spawn shims without containers (just ready), time each, shut them down."""
    times = []
    for _ in range(count):
        cid = env.new_id()
        env.bundle(cid, ["true"], overlay=False)
        began = time.perf_counter()
        client = await manager.spawn(env.config(cid, log=False))
        times.append((time.perf_counter() - began) * 1000)
        await client.shutdown()
    return times


async def memory(env: ShimEnv, manager: ShimManager, count: int) -> list[dict[str, int]]:
    ids = []
    for _ in range(count):
        cid = env.new_id()
        env.bundle(cid, ["sleep", "100000"])
        client, _ = await manager.create(env.config(cid))
        await client.start()
        ids.append(cid)
    await asyncio.sleep(1)
    figures = []
    for cid in ids:
        info = manager.info(cid)
        assert info is not None
        figures.append(smaps_rollup(info.pid))
    for cid in ids:
        await manager.client(cid).shutdown(force=True)
    return figures


async def throughput(env: ShimEnv, manager: ShimManager, script: str, output_bytes: int,
                     ) -> tuple[float, float, float, float]:
    """(container output MB/s, CRI log MB/s, shim CPU %, log MB) for a container writing output_bytes."""
    cid = env.new_id()
    env.bundle(cid, ["sh", "-c", script])
    client, _ = await manager.create(env.config(cid))
    info = manager.info(cid)
    assert info is not None
    cpu_before = cpu_seconds(info.pid)
    began = time.perf_counter()
    await client.start()
    status = await client.wait()
    elapsed = time.perf_counter() - began
    cpu = cpu_seconds(info.pid) - cpu_before
    size = (env.logs / f"{cid}.log").stat().st_size
    (env.logs / f"{cid}.log").unlink()
    await client.shutdown()
    assert status.exit_code == 0, status
    return output_bytes / elapsed / 1e6, size / elapsed / 1e6, 100 * cpu / elapsed, size / 1e6


async def main(executor: str, shims: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="crisp-shimbench-", dir="/tmp"))
    build_busybox_rootfs(base / "rootfs")
    env = ShimEnv(base / "rootfs", executor)
    manager = env.manager()
    await manager.start()
    try:
        times = await start_times(env, manager, 30)
        print(f"shim start-to-ready (ms, 30 shims): median {statistics.median(times):.1f}, "
              f"p90 {sorted(times)[26]:.1f}, min {min(times):.1f}, max {max(times):.1f}")
        figures = await memory(env, manager, shims)
        for key in ("rss", "pss", "uss"):
            values = [f[key] / 1024 for f in figures]
            print(f"shim {key.upper()} with {shims} containers running (MB): mean {statistics.mean(values):.2f}, "
                  f"min {min(values):.2f}, max {max(values):.2f}")
        zygote = manager.zygote_pid
        if zygote:
            z = smaps_rollup(zygote)
            print(f"zygote: RSS {z['rss'] / 1024:.2f} MB, PSS {z['pss'] / 1024:.2f} MB, USS {z['uss'] / 1024:.2f} MB")
        out, log, cpu, size = await throughput(env, manager, "yes | head -c 50000000", 50_000_000)
        print(f"log throughput, `yes` (50 MB of 2-byte lines -> {size:.0f} MB of log): {out:.1f} MB/s of output, "
              f"{log:.1f} MB/s of log, shim CPU {cpu:.0f}%")
        line = 64 * 1024
        out, log, cpu, size = await throughput(
            env, manager,
            f"head -c {line - 1} /dev/zero | tr '\\0' a > /tmp/l; echo >> /tmp/l; "
            "i=0; while [ $i -lt 800 ]; do cat /tmp/l /tmp/l /tmp/l /tmp/l /tmp/l; i=$((i+1)); done", 4000 * line)
        print(f"log throughput, 64 KiB lines (262 MB, split into 16 KiB parts -> {size:.0f} MB of log): "
              f"{out:.1f} MB/s of output, {log:.1f} MB/s of log, shim CPU {cpu:.0f}%")
    finally:
        await manager.close()
        problems = env.cleanup()
        shutil.rmtree(base, ignore_errors=True)
        if problems:
            print("left behind:", *problems, sep="\n  ")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--executor", default="runc")
    parser.add_argument("--shims", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.executor, args.shims))
