"""Memory of shared-PID pods' inits (run as root: `python -m tests.bench.pod_init [--pods 10] [--seconds 600]`).

Starts N pod inits the way crispd does (forked from a shim zygote: runtime/namespaces/pidns.py), waits, then prints
RSS, PSS and USS (/proc/<pid>/smaps_rollup) of each, and stops them. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from cri.shims.manager import ShimManager
from runtime.namespaces.pidns import remove_pid_pin, start_pod_init, stop_pod_init
from runtime.procs import ProcessRef
from tests.bench.procmem import smaps_rollup


async def main(pods: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="crisp-bench-podinit-") as tmp:
        base = Path(tmp)
        zygote = ShimManager(base / "containers")
        await zygote.start()
        inits: list[tuple[ProcessRef, Path]] = []
        try:
            for n in range(pods):
                pin = base / f"pod{n}" / "ns" / "pid"
                inits.append(((await start_pod_init(pin, f"pod{n}", zygote)).ref, pin))
            await asyncio.sleep(seconds)
            figures = [smaps_rollup(ref.pid) for ref, _ in inits]
            for key in ("rss", "pss", "uss"):
                values = [f[key] for f in figures]
                print(f"pod init {key.upper()} with {pods} running after {seconds:g}s: median "
                      f"{statistics.median(values) / 1024:.2f} MB, max {max(values) / 1024:.2f} MB")
        finally:
            for ref, pin in inits:
                await stop_pod_init(ref)
                await remove_pid_pin(pin)
            await zygote.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(main(args.pods, args.seconds))
