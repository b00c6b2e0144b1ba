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
from runtime.network.rollback import Rollback
from runtime.network.types import NetworkError


def run_helper(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(HELPER_ARGV), input=stdin, capture_output=True, text=True, timeout=60, check=False)


def test_helper_answers_in_json_and_exits() -> None:
    quiet = run_helper("")  # a spare that was never used
    assert (quiet.returncode, quiet.stdout) == (0, "")
    bad = run_helper('{"op": "format-disk"}\n')
    assert bad.returncode == 1
    assert json.loads(bad.stdout) == {"ok": False, "kind": "InvalidArgument",
                                      "message": 'network helper: not a known request: {"op": "format-disk"}'}
    broken = run_helper("{not json\n")
    assert json.loads(broken.stdout)["ok"] is False
    invalid = run_helper(json.dumps({"op": "teardown", "network": {"bridge": "eth0", "subnets": []},
                                     "sandboxId": "x", "veth": "crispx"}) + "\n")
    assert json.loads(invalid.stdout) == {
        "ok": False, "kind": "InvalidArgument",
        "message": "bridge name 'eth0': must start with 'crisp', then at most 10 letters, digits or '_'"}


def test_runner_maps_kinds_and_keeps_a_spare() -> None:
    async def scenario() -> None:
        runner = HelperRunner(timeout=60)
        with pytest.raises(errors.InvalidArgument, match="not a known request"):
            await runner.call({"op": "nothing"})
        spare = runner._spare
        assert spare is not None and spare.returncode is None
        with pytest.raises(errors.InvalidArgument):
            await runner.call({"op": "nothing"})
        assert runner._spare is not spare  # the spare was used, a new one waits
        last = runner._spare
        await runner.close()
        assert last is not None and last.returncode == 0  # it left on end of input

    asyncio.run(scenario())


def test_runner_kills_a_helper_that_hangs_or_crashes() -> None:
    async def scenario() -> None:
        hang = HelperRunner(timeout=0.5, prestart=False,
                            argv=(sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); "
                                  "time.sleep(60)"))
        procs: list[asyncio.subprocess.Process] = []
        original = hang._spawn

        async def spawn() -> asyncio.subprocess.Process:
            proc = await original()
            procs.append(proc)
            return proc

        hang._spawn = spawn  # type: ignore[method-assign]
        with pytest.raises(HelperTimeout, match=r"did not finish within 0\.5s"):
            await hang.call({"op": "setup"})
        assert procs[0].returncode is not None
        with pytest.raises(ProcessLookupError):
            os.kill(procs[0].pid, 0)

        crash = HelperRunner(timeout=10, prestart=False, argv=(sys.executable, "-c", "import sys; sys.exit(3)"))
        with pytest.raises(HelperCrashed, match="exited with 3"):
            await crash.call({"op": "setup"})
        nonsense = HelperRunner(timeout=10, prestart=False, argv=(sys.executable, "-c", "print('[1]')"))
        with pytest.raises(HelperCrashed):
            await nonsense.call({"op": "setup"})
        odd = HelperRunner(timeout=10, prestart=False, argv=(
            sys.executable, "-c", "print('{\"ok\": false, \"kind\": \"SomethingElse\", \"message\": \"m\"}')"))
        with pytest.raises(NetworkError, match=r"^m$"):
            await odd.call({"op": "setup"})

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
