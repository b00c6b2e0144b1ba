"""`start` with the resident executor: the shim starts the container in its own loop (shim/start.py), and runs
`start` as a command when the loop must not (poststart hooks, another command holding the container's lock)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from pathlib import Path
from typing import Any

import pytest

from runtime import errors
from tests.integration.shim.helpers import ShimEnv, run

pytestmark = pytest.mark.root


def _with_hooks(bundle: Path, hooks: dict[str, Any]) -> None:
    spec = json.loads((bundle / "config.json").read_text())
    spec["hooks"] = hooks
    (bundle / "config.json").write_text(json.dumps(spec))


def test_a_started_container_runs_and_a_second_start_is_refused(builtin_env: ShimEnv) -> None:
    cid = builtin_env.new_id()
    builtin_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> None:
        async with builtin_env.running_manager() as manager:
            client, pid = await manager.create(builtin_env.config(cid))
            assert await client.start() > 0
            assert (await client.state()).state == "running"
            assert os.readlink(f"/proc/{pid}/exe").endswith("/busybox")  # its program, not crisp's Python
            assert not (builtin_env.executor_root / cid / "exec.fifo").exists()
            with pytest.raises(errors.FailedPrecondition):
                await client.start()
            await client.kill(9)
            await manager.wait_exit(cid)
            await client.shutdown()

    run(scenario())


def test_a_failing_start_container_hook_fails_the_start(builtin_env: ShimEnv) -> None:
    """The init's word is the hook's error: the start fails with it, and the container can still be deleted."""
    cid = builtin_env.new_id()
    bundle = builtin_env.bundle(cid, ["sleep", "1000"])
    _with_hooks(bundle, {"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 4"]}]})

    async def scenario() -> None:
        async with builtin_env.running_manager() as manager:
            client, _ = await manager.create(builtin_env.config(cid))
            with pytest.raises(errors.CrispError) as failed:
                await client.start()
            assert "startContainer hook #0" in str(failed.value) and "exit status 4" in str(failed.value)
            await client.shutdown(force=True)

    run(scenario())


def test_poststart_hooks_run_through_the_command(builtin_env: ShimEnv, tmp_path: Path) -> None:
    cid = builtin_env.new_id()
    bundle = builtin_env.bundle(cid, ["sleep", "1000"])
    ran = tmp_path / "poststart-ran"
    _with_hooks(bundle, {"poststart": [{"path": "/bin/sh", "args": ["sh", "-c", f"cat > {ran}"]}]})

    async def scenario() -> None:
        async with builtin_env.running_manager() as manager:
            client, pid = await manager.create(builtin_env.config(cid))
            await client.start()
            assert json.loads(ran.read_text())["status"] == "running"
            assert json.loads(ran.read_text())["pid"] == pid
            await client.kill(9)
            await manager.wait_exit(cid)
            await client.shutdown()

    run(scenario())


def test_a_start_while_another_command_holds_the_lock_waits_for_it(builtin_env: ShimEnv) -> None:
    """The shim's loop never blocks on the container's lock: the command takes over and waits for it."""
    cid = builtin_env.new_id()
    builtin_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> None:
        async with builtin_env.running_manager() as manager:
            client, _ = await manager.create(builtin_env.config(cid))
            fd = os.open(builtin_env.executor_root / cid, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                starting = asyncio.create_task(client.start())
                await asyncio.sleep(0.5)
                assert not starting.done()
                assert (await client.state()).started_at > 0  # the shim still answers: starting
            finally:
                os.close(fd)
            assert await asyncio.wait_for(starting, 10) > 0
            assert (await client.state()).state == "running"
            await client.kill(9)
            await manager.wait_exit(cid)
            await client.shutdown()

    run(scenario())
