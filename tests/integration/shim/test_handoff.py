"""The hand-over to crisp-monitor: once its container runs, the shim is the C monitor (same pid, socket and
clients), and what the monitor does not serve itself runs in a delegate that the zygote forks."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from cri.shims.client import ShimClient
from cri.shims.manager import ShimManager
from runtime import errors
from shim import monitor, protocol
from tests.integration.shim.helpers import ShimEnv, run
from tests.leaks import await_until, children_of, wait_until

pytestmark = pytest.mark.root


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


async def _handed_over(pid: int) -> None:
    assert await await_until(lambda: _exe(pid) == monitor.BINARY), f"shim {pid} still runs {_exe(pid)!r}"


def _delegates(env: ShimEnv) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if comm == "crisp-delegate" and cwd.startswith(str(env.base)):
                found.append(int(entry))
    return found


async def _no_delegates(env: ShimEnv) -> None:
    assert await await_until(lambda: not _delegates(env)), f"delegates left: {_delegates(env)}"


def _pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return -1


def test_the_monitor_is_built() -> None:
    """make test builds it (scripts/build-monitor): without it every shim would stay Python, silently."""
    assert monitor.binary() == monitor.BINARY, "crisp-monitor is not built: run scripts/build-monitor"


def test_a_started_shim_becomes_the_monitor(shim_env: ShimEnv) -> None:
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sh", "-c", "echo started; exec sleep 1000"])

    async def scenario() -> None:
        async with shim_env.running_manager() as manager:
            client, pid = await manager.create(shim_env.config(cid))
            shim_pid = shim_env.shim_pids()[0]
            await client.start()
            await _handed_over(shim_pid)
            # the same process: crispd finds it again by pid and start time (shim.json is unchanged)
            assert shim_env.shim_pids() == [shim_pid]
            state = await client.state()
            assert (state.state, state.pid) == ("running", pid)
            assert _comm(shim_pid) == "crisp-shim"  # named so once it serves
            debug = await client.debug()
            assert debug["pid"] == shim_pid and debug["monitor"] is True
            print(f"monitor PSS: {_pss_kb(shim_pid)} kB")
            # exec runs in a delegate, which is gone once the exec is over
            result = await client.exec_sync(["sh", "-c", "echo $$ in; cat /proc/1/cmdline"])
            assert result.exit_code == 0 and result.stdout.endswith(b"sleep\x001000\x00")
            await _no_delegates(shim_env)
            await client.kill(9)
            status = await client.wait(call_timeout=30)
            assert status.exit_code == 137 and status.signal == 9
            await client.shutdown()
            for _ in range(100):
                if not shim_env.processes_left():
                    break
                await asyncio.sleep(0.05)
            assert not (shim_env.containers / cid / protocol.INFO_NAME).exists()
        assert b"started" in (shim_env.logs / f"{cid}.log").read_bytes()

    run(scenario())


def test_a_waiting_call_and_an_attach_session_are_handed_over(shim_env: ShimEnv) -> None:
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sh", "-c", "read line; echo got $line; exit 3"])

    async def scenario() -> None:
        async with shim_env.running_manager() as manager:
            client, _ = await manager.create(shim_env.config(cid, stdin=True))
            shim_pid = shim_env.shim_pids()[0]
            sent = asyncio.Event()
            waiting = asyncio.ensure_future(client.wait(sent=sent))
            await sent.wait()
            stream = await client.attach(stdin=True)
            await client.start()
            await _handed_over(shim_pid)
            await stream.write_stdin(b"hello\n")
            out = b""
            while (chunk := await stream.read()) is not None:
                out += chunk[1]
            assert out == b"got hello\n"
            assert stream.exit is not None and stream.exit["exit_code"] == 3
            status = await asyncio.wait_for(waiting, 30)
            assert status.exit_code == 3
            await stream.close()
            await client.shutdown()

    run(scenario())


def test_delegated_ops_need_crispds_zygote(shim_env: ShimEnv) -> None:
    """With crispd (and its zygote) gone, the monitor still serves what it does itself; an exec is Unavailable
    until a new crispd's zygote listens again."""
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> None:
        manager = await shim_env.started_manager()
        try:
            client, _ = await manager.create(shim_env.config(cid))
            shim_pid = shim_env.shim_pids()[0]
            await client.start()
            await _handed_over(shim_pid)
        finally:
            await manager.close()
        alone = ShimClient(cid, str(shim_env.containers / cid / protocol.SOCKET_NAME), timeout=30)
        assert (await alone.state()).state == "running"
        with pytest.raises(errors.Unavailable, match="zygote"):
            await alone.exec_sync(["true"])
        manager = await shim_env.started_manager()
        try:
            assert (await alone.exec_sync(["sh", "-c", "exit 4"])).exit_code == 4
            await alone.shutdown(force=True)
        finally:
            await manager.close()

    run(scenario())


def test_without_a_monitor_the_shim_stays_python(shim_env: ShimEnv) -> None:
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> None:
        manager = ShimManager(shim_env.containers, call_timeout=60, monitor="")
        loop = asyncio.get_running_loop()
        threshold, loop.slow_callback_duration = loop.slow_callback_duration, 10.0
        await manager.start()
        loop.slow_callback_duration = threshold
        try:
            client, _ = await manager.create(shim_env.config(cid))
            shim_pid = shim_env.shim_pids()[0]
            await client.start()
            await asyncio.sleep(0.5)
            assert "monitor" not in await client.debug()
            assert _exe(shim_pid) != monitor.BINARY
            assert not _exists(manager.zygote_socket)  # and no delegates' socket
            await client.shutdown(force=True)
        finally:
            await manager.close()

    run(scenario())


def test_an_exec_ends_unavailable_when_its_monitor_dies(shim_env: ShimEnv) -> None:
    """The delegate serving an exec is part of its shim: killed with the monitor (kill -9), the exec's caller hears
    Unavailable (not a hang), the delegate and the exec's processes go, and crispd cleans up as after any shim
    death."""
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> None:
        async with shim_env.running_manager() as manager:
            client, _ = await manager.create(shim_env.config(cid))
            shim_pid = shim_env.shim_pids()[0]
            await client.start()
            await _handed_over(shim_pid)
            stream = await client.exec(["sh", "-c", "echo ready; exec sleep 1000"])
            first = await stream.read()
            assert first is not None and first[1] == b"ready\n"
            assert len(_delegates(shim_env)) == 1
            os.kill(shim_pid, signal.SIGKILL)
            with pytest.raises(errors.Unavailable, match="died"):
                await asyncio.wait_for(stream.read(), 30)
            await stream.close()
            status = await manager.wait_exit(cid)
            assert status.reason == "ShimDied"
            await _no_delegates(shim_env)

    run(scenario())


def _spares(zygote: int) -> list[int]:
    """The zygote's children that still run its program: the spare delegate waiting for a request."""
    found = []
    for pid in children_of(zygote):
        try:
            if b"shim.zygote" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def test_one_spare_delegate_waits_and_goes_with_the_zygote(shim_env: ShimEnv) -> None:
    """The zygote keeps one delegate forked ahead of its request: an exec takes it and a new one is forked; when
    crispd stops the zygote, the spare ends too (nothing keeps its socket to the zygote open)."""
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> list[int]:
        manager = await shim_env.started_manager()
        try:
            zygote = manager.zygote_pid
            assert zygote is not None
            assert await await_until(lambda: len(_spares(zygote)) == 1)
            (first,) = _spares(zygote)
            client, _ = await manager.create(shim_env.config(cid))
            await client.start()
            await _handed_over(shim_env.shim_pids()[0])
            assert (await client.exec_sync(["true"])).exit_code == 0
            assert await await_until(lambda: len(_spares(zygote)) == 1 and first not in _spares(zygote))
            await client.shutdown(force=True)  # a kill --all and a delete: two more delegates
            assert await await_until(lambda: len(_spares(zygote)) == 1)
            left = _spares(zygote)
        finally:
            await manager.close()
        return left

    left = run(scenario())
    assert wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in left)), left


def test_a_shutdown_answers_once_its_delegates_are_gone(shim_env: ShimEnv) -> None:
    """A caller told that the shim shut down finds nothing of it left: not the delete's delegate, not an exec's
    (crispd removes the bundle next, and its leak checks look right away)."""
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> None:
        async with shim_env.running_manager() as manager:
            client, _ = await manager.create(shim_env.config(cid))
            await client.start()
            await _handed_over(shim_env.shim_pids()[0])
            assert (await client.exec_sync(["true"])).exit_code == 0
            await client.shutdown(force=True)
            assert _delegates(shim_env) == []  # at once, no waiting

    run(scenario())
