"""A shim spawned without waiting for it (ShimManager.spawn_soon: CreateContainer answers before its shim is ready).
Whoever needs the shim next waits for the spawn (`settled`), and a discard while it is still starting waits for
it too, so that the shim goes and does not appear after the discard."""

from __future__ import annotations

import pytest

from tests.integration.shim.helpers import ShimEnv, run
from tests.leaks import wait_until

pytestmark = pytest.mark.root


def test_a_shim_discarded_while_it_starts_does_not_stay(builtin_env: ShimEnv) -> None:
    cid = builtin_env.new_id()
    builtin_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> None:
        async with builtin_env.running_manager() as manager:
            spawning = manager.spawn_soon(builtin_env.config(cid))
            assert not spawning.done()
            await manager.discard(cid)
            assert spawning.done() and spawning.exception() is None
            assert manager.info(cid) is None and not manager.is_alive(cid)

    run(scenario())
    assert wait_until(lambda: builtin_env.processes_left() == [], 5), builtin_env.processes_left()


def test_a_shim_still_starting_is_waited_for_and_then_creates(builtin_env: ShimEnv) -> None:
    cid = builtin_env.new_id()
    builtin_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> None:
        async with builtin_env.running_manager() as manager:
            config = builtin_env.config(cid)
            spawning = manager.spawn_soon(config)
            assert not spawning.done()
            await manager.settled(cid)
            assert spawning.done() and manager.is_alive(cid) and manager.never_told(cid)
            client, pid = await manager.create(config, spawning=spawning)
            assert pid > 0 and (await client.state()).state == "created"
            await client.kill(9)
            await manager.wait_exit(cid)
            await client.shutdown()

    run(scenario())
