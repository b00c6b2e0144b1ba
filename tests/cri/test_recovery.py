"""crispd's start reconciles its records with what exists: what no record refers to is undone."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from pathlib import Path

import pytest

from cri import api as cri
from runtime.namespaces.pidns import start_pod_init
from runtime.namespaces.pin import NamespaceSetup, pin_namespaces
from tests.cri.pods import Pods, pod_config
from tests.leaks import mounts_under

pytestmark = pytest.mark.root


def test_dirs_and_pins_without_a_record_are_removed_at_start(tmp_path: Path) -> None:
    """What a crispd older than name intents (or a hand) left: a pod dir with pinned namespaces and a running
    PID 1, a container bundle and writable layer, none of them in the database."""
    p = Pods(tmp_path)
    pod_dir = p.daemon.state / "sandboxes" / secrets.token_hex(32)
    container_id = secrets.token_hex(32)
    bundle, layer = p.daemon.state / "containers" / container_id, p.daemon.root / "containers" / container_id

    async def leave_a_pod() -> int:
        await pin_namespaces(pod_dir / "ns", NamespaceSetup(kinds=frozenset({"net", "ipc", "uts"})))
        return (await start_pod_init(pod_dir / "ns" / "pid")).pid

    init_pid = asyncio.run(leave_a_pod())
    (bundle / "rootfs").mkdir(parents=True)
    (layer / "upper").mkdir(parents=True)
    try:
        assert len(mounts_under(tmp_path)) == 4
        p.daemon.start()
        assert not pod_dir.exists() and not bundle.exists() and not layer.exists()
        assert not Path(f"/proc/{init_pid}").exists() or b"podinit" not in Path(
            f"/proc/{init_pid}/cmdline").read_bytes()
        assert p.leaks() == []
        p.run(pod_config())  # and crispd works as ever
    finally:
        for item in p.daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items:
            p.daemon.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=item.id))
        leaks = p.leaks()
        assert p.daemon.stop() == 0
        for m in reversed(mounts_under(tmp_path)):
            subprocess.run(["umount", "-l", m], check=False)
        p.cleanup_host()
    assert leaks == []
