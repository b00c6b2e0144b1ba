"""runtime.aioproc: a child started off the loop, its pipes on the loop, its exit through a pidfd."""

from __future__ import annotations

import asyncio
import threading

from runtime import aioproc


def test_pipes_exit_and_kill() -> None:
    async def scenario() -> None:
        loop_thread = threading.get_ident()
        proc = await aioproc.spawn(["sh", "-c", "read line; echo got $line; exit 3"])
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.returncode is None
        proc.stdin.write(b"hello\n")
        await proc.stdin.drain()
        assert await proc.stdout.readline() == b"got hello\n"
        assert await proc.wait() == 3
        assert proc.returncode == 3
        assert threading.get_ident() == loop_thread

        sleeper = await aioproc.spawn(["sleep", "60"], stdin=False, stdout=False)
        sleeper.kill()
        assert await asyncio.wait_for(sleeper.wait(), 10) == -9

    asyncio.run(scenario())
