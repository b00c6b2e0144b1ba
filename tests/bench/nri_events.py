"""Figures: what NRI costs an RPC: one CreateContainer event (with a merged adjustment) relayed to 0, 1 and 3
plugins over real unix sockets (ttrpc over the multiplexer), and a synchronization of 1000 containers.

    .venv/bin/python -m tests.bench.nri_events [N]

The plugins are tests/nri's Python stub in this process (so the figure includes both ends' Python). Not a test:
nothing is asserted.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runtime.nri import api
from runtime.nri.adaptation import Adaptation, Settings
from tests.nri.stub import Stub


def _adjuster(name: str) -> Any:
    async def adjust(request: Any) -> Any:
        response = api.CreateContainerResponse()
        response.adjust.env.add(key=f"FROM_{name}", value="1")
        return response
    return adjust


async def _measure(plugins: int, n: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="crisp-nri-bench-") as tmp:
        base = Path(tmp)
        containers = [api.Container(id=f"c{i:04}", name=f"c{i}", annotations={"a": "b" * 64}) for i in range(1000)]

        async def sync() -> tuple[list[Any], list[Any]]:
            return [], containers

        async def update(updates: list[Any]) -> list[Any]:
            return []

        nri = Adaptation(Settings(base / "nri.sock", base / "plugins", base / "conf"), "bench", "0", sync, update)
        await nri.start()
        stubs = []
        sync_seconds = 0.0
        for i in range(plugins):
            stub = Stub(f"p{i}", f"{10 + i}", api.VALID_EVENTS, {"CreateContainer": _adjuster(f"p{i}")})
            started = time.perf_counter()
            await stub.connect(str(base / "nri.sock"))
            while len(nri.plugins()) <= i:  # noqa: ASYNC110 (joining is internal to the adaptation)
                await asyncio.sleep(0.001)
            sync_seconds = time.perf_counter() - started
            stubs.append(stub)
        samples = []
        pod = api.PodSandbox(id="pod", name="pod")
        for i in range(n):
            started = time.perf_counter()
            await nri.create_container(pod, api.Container(id=f"new{i}", name="x"))
            samples.append(time.perf_counter() - started)
        for stub in stubs:
            await stub.close()
        await nri.stop()
        return statistics.median(samples), sync_seconds


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    for plugins in (0, 1, 3):
        event, joined = asyncio.run(_measure(plugins, n))
        extra = f", last plugin's join with 1000 containers {joined * 1e3:.1f} ms" if plugins else ""
        print(f"CreateContainer event, {plugins} plugin(s): median {event * 1e6:.0f} us over {n}{extra}")


if __name__ == "__main__":
    main()
