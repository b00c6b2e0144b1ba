"""crispd with RunPodSandbox's steps timed, for tests/bench/runp_steps.py (figures, not a test).

Run instead of crispd (`python tests/bench/runp_probe.py <crispd's arguments>`): before crispd's main it wraps the
calls RunPodSandbox makes (the name reservation, the controller's steps, the network setup, the record) and its
debug points, and appends one JSON line per RunPodSandbox to the file `CRISP_RUNP_PROBE` names: each span's name,
start and end in ms from the RPC handler's start. Meant for one pod at a time: a span is the pod's whose RPC is the
newest.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the checkout whose crispd runs (`CRISP_PROBE_ROOT`, e.g. /work/main for an A/B), by default this one
sys.path.insert(0, os.environ.get("CRISP_PROBE_ROOT") or str(Path(__file__).resolve().parents[2]))

_current: dict[str, Any] = {}


def _now_ms() -> float:
    return (time.perf_counter() - _current.get("t0", 0.0)) * 1000


def _record(name: str, began: float, ended: float) -> None:
    spans = _current.get("spans")
    if spans is not None:
        spans.append((name, round(began, 2), round(ended, 2)))


def _timed_async(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = _now_ms()
        try:
            return await fn(*args, **kwargs)
        finally:
            _record(name, began, _now_ms())
    return wrapper


def _timed_sync(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = _now_ms()
        try:
            return fn(*args, **kwargs)
        finally:
            _record(name, began, _now_ms())
    return wrapper


def install(out: Path) -> None:
    from cri.debug import DebugPoints
    from cri.lifecycle import pods
    from cri.lifecycle.creations import Creations
    from cri.service import sandbox_run
    from cri.store.names import NameIndex
    from cri.store.sandboxes import SandboxStore
    from runtime.network.manager import NetworkManager

    handler = sandbox_run.run_pod_sandbox

    async def run_pod_sandbox(*args: Any, **kwargs: Any) -> Any:
        _current.clear()
        _current.update(t0=time.perf_counter(), spans=[])
        spans = _current["spans"]
        try:
            return await handler(*args, **kwargs)
        finally:
            _record("RunPodSandbox handler", 0.0, _now_ms())
            with out.open("a") as f:
                f.write(json.dumps(spans) + "\n")

    sandbox_run.run_pod_sandbox = run_pod_sandbox  # type: ignore[assignment]

    point = DebugPoints.point

    async def timed_point(self: DebugPoints, name: str) -> None:
        now = _now_ms()
        _record(f"point {name}", now, now)
        await point(self, name)

    DebugPoints.point = timed_point  # type: ignore[method-assign]

    NameIndex.reserve = _timed_async("names.reserve", NameIndex.reserve)  # type: ignore[method-assign]
    SandboxStore.add = _timed_async("sandboxes.add", SandboxStore.add)  # type: ignore[method-assign]
    NetworkManager.setup = _timed_async("network.setup", NetworkManager.setup)  # type: ignore[method-assign]
    Creations.run_to_the_end = _timed_async("run_to_the_end", Creations.run_to_the_end)  # type: ignore
    from cri.store.leases import SqliteLeaseStore
    from runtime.network.bridge import BridgeBackend
    from runtime.network.cni import CniBackend
    from runtime.network.helper_client import HelperRunner

    if hasattr(NetworkManager, "prepare"):  # the first half of the setup, run while the netns is pinned
        NetworkManager.prepare = _timed_async("network.prepare", NetworkManager.prepare)  # type: ignore
    NetworkManager.teardown = _timed_async("  network: teardown first", NetworkManager.teardown)  # type: ignore
    NetworkManager.backend = _timed_async("  network: backend choice", NetworkManager.backend)  # type: ignore
    CniBackend.teardown = _timed_async("    cni.teardown", CniBackend.teardown)  # type: ignore[method-assign]
    BridgeBackend.teardown = _timed_async("    bridge.teardown", BridgeBackend.teardown)  # type: ignore
    BridgeBackend.setup = _timed_async("  bridge.setup", BridgeBackend.setup)  # type: ignore[method-assign]
    BridgeBackend.network = _timed_async("    bridge.network", BridgeBackend.network)  # type: ignore
    SqliteLeaseStore.acquire = _timed_async("    leases.acquire", SqliteLeaseStore.acquire)  # type: ignore
    HelperRunner.call = _timed_async("    helper.call", HelperRunner.call)  # type: ignore[method-assign]
    controller = pods.PodSandboxController
    controller.plan = _timed_sync("controller.plan", controller.plan)  # type: ignore[method-assign]
    for name in ("pin_namespaces", "publish_netns", "write_pod_files", "mount_tmpfs"):
        timed = _timed_sync if name == "write_pod_files" else _timed_async
        setattr(pods, name, timed(name, getattr(pods, name)))


def main() -> int:
    install(Path(os.environ["CRISP_RUNP_PROBE"]))
    from cri.daemon import main as crispd_main

    return crispd_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
