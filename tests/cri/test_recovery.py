"""crispd's start reconciles its records with what exists: what no record refers to is undone."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cri import api as cri
from cri.shims.manager import ShimManager
from runtime.mounts import unmount
from runtime.namespaces.pidns import start_pod_init
from runtime.namespaces.pin import NamespaceSetup, pin_namespaces
from runtime.procs import ProcessRef
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

    async def leave_a_pod() -> None:
        async with warm_zygote(tmp_path) as zygote:
            await pin_namespaces(pod_dir / "ns", NamespaceSetup(kinds=frozenset({"net", "ipc", "uts"})), zygote)
            inits.append((await start_pod_init(pod_dir / "ns" / "pid", pod_dir.name, zygote)).ref)

    inits: list[ProcessRef] = []
    leaks: list[str] = []
    try:
        asyncio.run(leave_a_pod())
        (bundle / "rootfs").mkdir(parents=True)
        (layer / "upper").mkdir(parents=True)
        assert len(mounts_under(tmp_path)) == 4
        p.daemon.start()
        assert not pod_dir.exists() and not bundle.exists() and not layer.exists()
        assert not inits[0].alive()
        assert p.leaks() == []
        p.run(pod_config())  # and crispd works as ever
        for item in p.daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items:
            p.daemon.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=item.id))
        leaks = p.leaks()
    finally:
        _clean_up(p, tmp_path, inits)
    assert leaks == []


@contextlib.asynccontextmanager
async def warm_zygote(tmp_path: Path) -> AsyncIterator[ShimManager]:
    """The shim zygote crispd would fork the pod's namespace work from (a crispd's own, without the crispd)."""
    zygote = ShimManager(tmp_path / "zygote-containers")
    await zygote.start()
    try:
        yield zygote
    finally:
        await zygote.close()


def _clean_up(p: Pods, tmp_path: Path, inits: list[ProcessRef]) -> None:
    """What a test left, also when it failed halfway (crispd may not have started): crispd stops, the pod inits
    it made are killed (these very processes only), the mounts under the test's dir are detached."""
    assert p.daemon.stop() == 0
    for init in inits:
        init.signal()
    for m in reversed(mounts_under(tmp_path)):
        subprocess.run(["umount", "-l", m], check=False)
    p.cleanup_host()


def test_a_user_namespaced_pod_init_crispd_did_not_pin_yet_is_found_at_start(tmp_path: Path) -> None:
    """A pod's init makes its PID namespace itself (a user-namespaced pod's inside the pod's user namespace), and
    crispd pins it once the init runs: a crispd killed in between left an init that no pin names. The next start
    finds it through its log and kills it with the rest of the pod."""
    p = Pods(tmp_path)
    pod_dir = p.daemon.state / "sandboxes" / secrets.token_hex(32)
    pid_pin = pod_dir / "ns" / "pid"
    mappings = ((0, 3_000_000, 65536),)

    async def leave_a_pod() -> None:
        async with warm_zygote(tmp_path) as zygote:
            pins = await pin_namespaces(pod_dir / "ns", NamespaceSetup(kinds=frozenset({"user", "ipc"}),
                                                                     uid_mappings=mappings, gid_mappings=mappings),
                                        zygote)
            inits.append((await start_pod_init(pid_pin, pod_dir.name, zygote, userns=str(pins["user"]))).ref)
        await unmount(pid_pin)  # as before crispd pinned it

    inits: list[ProcessRef] = []
    leaks: list[str] = []
    try:
        asyncio.run(leave_a_pod())
        assert inits[0].alive() and len(mounts_under(tmp_path)) == 2
        p.daemon.start()
        assert not pod_dir.exists()
        assert not inits[0].alive()
        leaks = p.leaks()
    finally:
        _clean_up(p, tmp_path, inits)
    assert leaks == []
