"""crisp-shim under a pure cgroup v2 kernel with the memory controller: an OOM kill is reported as such."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.shim.helpers import EXECUTORS, ShimEnv, build_busybox_rootfs, run

MiB = 1 << 20


@pytest.fixture(params=EXECUTORS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ShimEnv]:
    build_busybox_rootfs(tmp_path / "rootfs")
    made = ShimEnv(tmp_path / "rootfs", request.param)
    try:
        yield made
    finally:
        problems = made.cleanup()
        shutil.rmtree(tmp_path / "rootfs", ignore_errors=True)
    assert problems == [], "left behind:\n" + "\n".join(problems)


def test_oom_kill_is_reported(env: ShimEnv) -> None:
    cid = env.new_id()
    env.bundle(cid, ["sh", "-c", f"x=$(head -c {64 * MiB} /dev/zero | tr '\\000' x); echo survived"],
               memory_limit=16 * MiB)
    survivor = env.new_id()
    env.bundle(survivor, ["sh", "-c", "x=$(head -c 1000000 /dev/zero | tr '\\000' x); echo survived"],
               memory_limit=64 * MiB)

    async def scenario() -> None:
        manager = await env.started_manager()
        try:
            for container, oom in ((cid, True), (survivor, False)):
                client, _ = await manager.create(env.config(container))
                assert (env.cgroup_dir(container) / "memory.max").read_text().strip() != "max"
                await client.start()
                status = await manager.wait_exit(container)
                assert status.oom_killed is oom, status
                if oom:
                    assert status.exit_code == 137 and status.signal == 9
                else:
                    assert status.exit_code == 0
                await client.shutdown()
        finally:
            await manager.close()

    # the VM's CPU is emulated (TCG): loop timings mean nothing there
    run(scenario(), check_slow_callbacks=False)
    assert b"survived" not in (env.logs / f"{cid}.log").read_bytes()
