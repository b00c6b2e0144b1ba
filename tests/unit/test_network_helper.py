"""The network helper's process protocol and crisp's rollback (no root needed: no kernel work is asked for)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys

import pytest

from runtime import errors
from runtime.network.helper_client import HELPER_ARGV, HelperCrashed, HelperRunner, HelperTimeout
from runtime.network.types import NetworkError
from runtime.rollback import Rollback
from tests.leaks import await_until


def run_helper(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(HELPER_ARGV), input=stdin, capture_output=True, text=True, timeout=60, check=False)


def test_helper_answers_each_line_in_json_until_end_of_input() -> None:
    quiet = run_helper("")
    assert (quiet.returncode, quiet.stdout) == (0, "")
    invalid = json.dumps({"op": "teardown", "network": {"bridge": "eth0", "subnets": []},
                          "pods": [{"sandboxId": "x", "veth": "crispx"}]})
    done = run_helper('{"op": "format-disk"}\n\n{not json\n' + invalid + "\n")
    assert done.returncode == 0
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert answers[0] == {"ok": False, "kind": "InvalidArgument",
                          "message": 'network helper: not a known request: {"op": "format-disk"}'}
    assert answers[1]["ok"] is False  # the blank line got no answer; the broken one an error
    assert answers[2] == {
        "ok": False, "kind": "InvalidArgument",
        "message": "bridge name 'eth0': must start with 'crisp', then at most 10 letters, digits or '_'"}
    assert len(answers) == 3


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_runner_reuses_helpers_up_to_its_limits() -> None:
    async def scenario() -> None:
        runner = HelperRunner(timeout=60, max_workers=2, keep_warm=0)
        with pytest.raises(errors.InvalidArgument, match="not a known request"):
            await runner.call({"op": "nothing"})
        first = runner.pids
        with pytest.raises(errors.InvalidArgument):
            await runner.call({"op": "nothing"})
        assert runner.pids == first and len(first) == 1  # the same helper served both

        async def ask() -> None:
            with pytest.raises(errors.InvalidArgument):
                await runner.call({"op": "nothing"})

        await asyncio.gather(*(ask() for _ in range(6)))
        assert 1 <= len(runner.pids) <= 2
        pids = runner.pids
        await runner.close()
        assert runner.pids == [] and not any(_alive(pid) for pid in pids)
        with pytest.raises(errors.Unavailable):
            await runner.call({"op": "nothing"})

        retiring = HelperRunner(timeout=60, max_requests=1, idle_seconds=0.3, keep_warm=0)
        seen = set()
        for _ in range(2):
            with pytest.raises(errors.InvalidArgument):
                await retiring.call({"op": "nothing"})
            seen.update(retiring.pids)
        assert len(seen) == 0  # each helper was retired after its one request
        idle = HelperRunner(timeout=60, idle_seconds=0.3, keep_warm=0)
        with pytest.raises(errors.InvalidArgument):
            await idle.call({"op": "nothing"})
        (pid,) = idle.pids
        await asyncio.sleep(1.0)
        assert idle.pids == [] and not _alive(pid)  # idle too long: gone
        await retiring.close()
        await idle.close()

    asyncio.run(scenario())


def test_runner_keeps_a_helper_warm() -> None:
    """One helper is started ahead of the first request, stays when idle, and is replaced in the background when
    it is retired or killed: no request waits for a Python start while the pool has none."""
    async def scenario() -> None:
        runner = HelperRunner(timeout=60, idle_seconds=0.2, max_requests=2)
        runner.warm()
        assert await await_until(lambda: len(runner.pids) == 1)  # before any request
        (first,) = runner.pids
        for _ in range(2):  # its two requests: then it is retired, and another comes without being asked for
            with pytest.raises(errors.InvalidArgument):
                await runner.call({"op": "nothing"})
        assert await await_until(lambda: runner.pids not in ([], [first]))
        (second,) = runner.pids
        await asyncio.sleep(0.6)  # idle for longer than idle_seconds: the last helper stays
        assert runner.pids == [second] and _alive(second)
        with pytest.raises(errors.InvalidArgument):
            await runner.call({"op": "nothing"})
        assert runner.pids == [second]  # it served the request
        pids = [first, second]
        await runner.close()
        assert runner.pids == [] and not any(_alive(pid) for pid in pids)

        hang = HelperRunner(timeout=0.5, argv=(sys.executable, "-c", "import time; time.sleep(60)"))
        with pytest.raises(HelperTimeout):
            await hang.call({"op": "setup"})  # killed: a new one is started for the next request
        assert await await_until(lambda: len(hang.pids) == 1)
        (spare,) = hang.pids
        await hang.close()
        assert hang.pids == [] and await await_until(lambda: not _alive(spare))

    asyncio.run(scenario())


def test_the_idle_reaper_finding_every_helper_busy_leaves_them_and_shrinks_the_pool_later() -> None:
    """The reaper may fire when the helpers it was set for are all busy again: it leaves them (it used to fail on
    an empty idle list), and once they are idle long enough the pool shrinks to `keep_warm`."""
    slow = (sys.executable, "-c", "import sys, time\nfor line in sys.stdin:\n    time.sleep(0.4)\n"
            "    print('{\"ok\": true}', flush=True)")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        failures: list[object] = []
        loop.set_exception_handler(lambda _, context: failures.append(context.get("exception")))
        runner = HelperRunner(timeout=30, max_workers=2, idle_seconds=0.2, argv=slow)
        await asyncio.gather(*(runner.call({"op": "x"}) for _ in range(2)))  # two helpers; idle now: the reaper is set
        await asyncio.gather(*(runner.call({"op": "x"}) for _ in range(2)))  # both busy when it fires
        assert len(runner.pids) == 2
        assert await await_until(lambda: len(runner.pids) == 1, 5)  # then idle: down to the one kept warm
        assert failures == []
        await runner.close()

    asyncio.run(scenario())


def test_runner_kills_a_helper_that_hangs_crashes_or_talks_nonsense() -> None:
    async def scenario() -> None:
        hang = HelperRunner(timeout=0.5, argv=(sys.executable, "-c", "import time; time.sleep(60)"), keep_warm=0)
        with pytest.raises(HelperTimeout, match=r"did not finish within 0\.5s"):
            await hang.call({"op": "setup"})
        assert hang.pids == []

        crash = HelperRunner(timeout=10, argv=(sys.executable, "-c", "import sys; sys.exit(3)"))
        with pytest.raises(HelperCrashed, match="exited with 3"):
            await crash.call({"op": "setup"})
        nonsense = HelperRunner(timeout=10, argv=(sys.executable, "-c", "input(); print('[1]', flush=True); input()"),
                                keep_warm=0)
        with pytest.raises(HelperCrashed):
            await nonsense.call({"op": "setup"})
        assert nonsense.pids == []
        odd = HelperRunner(timeout=10, argv=(
            sys.executable, "-c",
            "input(); print('{\"ok\": false, \"kind\": \"SomethingElse\", \"message\": \"m\"}', flush=True); input()"))
        with pytest.raises(NetworkError, match=r"^m$"):
            await odd.call({"op": "setup"})
        for runner in (hang, crash, nonsense, odd):
            await runner.close()

    asyncio.run(scenario())


def test_rollback_undoes_in_reverse_and_keeps_the_error(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    async def step(name: str, fail: bool = False) -> None:
        if fail:
            raise RuntimeError(f"undo {name} broke")
        done.append(name)

    async def scenario() -> None:
        with pytest.raises(ValueError, match="the real error"):
            async with Rollback("test") as rollback:
                rollback.push("a", lambda: step("a"))
                rollback.push("b", lambda: step("b", fail=True))
                rollback.push("c", lambda: step("c"))
                raise ValueError("the real error")
        assert done == ["c", "a"]
        done.clear()
        async with Rollback("test") as rollback:
            rollback.push("a", lambda: step("a"))
            rollback.commit()
        assert done == []

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert "undo step failed: b" in caplog.text


def test_rollback_finishes_when_cancelled() -> None:
    done: list[str] = []

    async def slow_undo() -> None:
        await asyncio.sleep(0.2)
        done.append("undone")

    async def work() -> None:
        async with Rollback("test") as rollback:
            rollback.push("slow", slow_undo)
            await asyncio.sleep(10)

    async def scenario() -> None:
        task = asyncio.ensure_future(work())
        await asyncio.sleep(0.05)
        task.cancel()  # the work is cancelled: the undo starts
        await asyncio.sleep(0.05)
        task.cancel()  # and cancelled again while undoing: the undo still finishes
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.4)
        assert done == ["undone"]

    asyncio.run(scenario())
