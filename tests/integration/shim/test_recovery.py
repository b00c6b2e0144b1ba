"""Crashes: crispd's shim manager SIGKILLed while containers run; a shim SIGKILLed under its container."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from cri.shims.manager import UNKNOWN_EXIT_CODE, CleanupFailed, shim_alive
from shim import protocol
from tests.integration.shim.helpers import ShimEnv, joined_output, run

pytestmark = pytest.mark.root

COUNTER = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_manager_killed_containers_keep_running_and_a_new_manager_reconnects(shim_env: ShimEnv) -> None:
    ids = [shim_env.new_id() for _ in range(2)]
    for cid in ids:
        shim_env.bundle(cid, ["sh", "-c", COUNTER])
    configs = [shim_env.config(cid).to_json() for cid in ids]
    proc = subprocess.Popen([sys.executable, "-m", "tests.integration.shim.manager_proc", str(shim_env.containers),
                             json.dumps(configs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        started = json.loads(line)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # the zygote notices that its crispd is gone and ends; the shims and containers stay
        assert _wait_gone(started["zygote"])
        logs = [shim_env.logs / f"{cid}.log" for cid in ids]
        sizes = [log.stat().st_size for log in logs]
        time.sleep(0.5)
        assert all(log.stat().st_size > size for log, size in zip(logs, sizes, strict=True))  # logs keep growing
        for pid in started["pids"].values():
            assert _alive(pid)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    async def reconnect() -> None:
        async with shim_env.running_manager() as manager:
            found = {r.id: r for r in await manager.recover()}
            assert set(found) == set(ids)
            for cid in ids:
                assert found[cid].client is not None and found[cid].status is None
                state = await found[cid].client.state()  # type: ignore[union-attr]
                assert state.state == "running" and state.pid == started["pids"][cid]
            # one exits while we are connected, the other is stopped and collected
            first, second = ids
            # (sh as pid 1 of its namespace ignores SIGTERM: it has no handler for it)
            await manager.client(first).kill(signal.SIGKILL)
            status = await manager.wait_exit(first)
            assert status.exit_code == 128 + signal.SIGKILL
            await manager.client(first).shutdown()
            await manager.client(second).shutdown(force=True)

    run(reconnect())
    for cid in ids:
        numbers = [int(line.split()[1]) for line in joined_output(shim_env.logs / f"{cid}.log").decode().split("\n")
                   if line]
        assert numbers == list(range(len(numbers)))


def test_container_exits_while_crispd_is_down(runc_env: ShimEnv) -> None:
    """The exit status written while nobody listened is what the next manager reports."""
    cid = runc_env.new_id()
    runc_env.bundle(cid, ["sh", "-c", "sleep 0.5; exit 42"])

    async def create() -> None:
        async with runc_env.running_manager() as manager:  # closed at the end: crispd goes away, the shim stays
            client, _ = await manager.create(runc_env.config(cid))
            await client.start()

    run(create())
    status_file = runc_env.containers / cid / protocol.STATUS_NAME
    deadline = time.monotonic() + 30
    while not status_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)

    async def later() -> None:
        async with runc_env.running_manager() as manager:
            (found,) = await manager.recover()
            assert found.client is not None  # the shim waits for its status to be collected
            status = await manager.wait_exit(cid)
            assert status.exit_code == 42 and status.reason == ""
            await found.client.shutdown()

    run(later())


def test_shim_killed_reports_exit_with_reason(shim_env: ShimEnv) -> None:
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> int:
        async with shim_env.running_manager() as manager:
            client, pid = await manager.create(shim_env.config(cid))
            await client.start()
            info = manager.info(cid)
            assert info is not None and shim_alive(info.pid, info.start_time)
            os.kill(info.pid, signal.SIGKILL)
            status = await manager.wait_exit(cid)
            assert status.reason == "ShimDied" and status.exit_code == UNKNOWN_EXIT_CODE
            assert str(info.pid) in status.message
            return pid

    pid = run(scenario())
    # the orphaned container was killed and deleted, its rootfs unmounted
    assert _wait_gone(pid)
    assert not os.path.ismount(shim_env.containers / cid / "rootfs")


def test_shim_killed_after_exit_keeps_the_real_exit_code(runc_env: ShimEnv) -> None:
    cid = runc_env.new_id()
    runc_env.bundle(cid, ["sh", "-c", "exit 5"])

    async def scenario() -> None:
        async with runc_env.running_manager() as manager:
            client, _ = await manager.create(runc_env.config(cid))
            await client.start()
            await client.wait()
            info = manager.info(cid)
            assert info is not None
            os.kill(info.pid, signal.SIGKILL)
            await manager.shim_gone(info)
        # a later crispd finds the dead shim and the status it left
        async with runc_env.running_manager() as manager:
            (found,) = await manager.recover()
            assert found.client is None and found.status is not None
            assert found.status.exit_code == 5 and found.status.reason == ""

    run(scenario())


def test_a_dead_shims_remains_that_will_not_go_are_kept_and_said(runc_env: ShimEnv,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """After a shim died, crispd deletes its container; when that delete fails the record (shim.json) stays, the
    failure is a WARNING (it was a DEBUG line, and the record went), discarding the container raises, and once the
    executor can delete it a later discard cleans up."""
    cid = runc_env.new_id()
    runc_env.bundle(cid, ["sleep", "1000"])
    refuse = runc_env.base / "refuse-delete"
    script = f'case " $* " in *" delete "*) if [ -e {refuse} ]; then echo "delete refused" >&2; exit 1; fi;; ' \
             'esac; exec runc "$@"'
    info_file = runc_env.containers / cid / protocol.INFO_NAME

    async def scenario() -> None:
        async with runc_env.running_manager() as manager:
            config = dataclasses.replace(runc_env.config(cid), executor=["/bin/sh", "-c", script, "runc-refusing"])
            client, _ = await manager.create(config)
            await client.start()
            info = manager.info(cid)
            assert info is not None
            refuse.touch()
            os.kill(info.pid, signal.SIGKILL)
            status = await manager.wait_exit(cid)
            assert status.reason == "ShimDied"
            assert info_file.exists() and manager.info(cid) is not None
            with pytest.raises(CleanupFailed, match="delete refused"):
                await manager.discard(cid)
            assert info_file.exists()
            refuse.unlink()
            await manager.discard(cid)
            assert not info_file.exists() and manager.info(cid) is None

    with caplog.at_level(logging.WARNING, logger="cri.shims.manager"):
        run(scenario())
    assert any(r.levelno == logging.WARNING and "delete refused" in r.getMessage() for r in caplog.records)
    assert not os.path.ismount(runc_env.containers / cid / "rootfs")
