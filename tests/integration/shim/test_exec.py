"""Exec through the shim: pipes, pty and resize, exit codes, timeouts, and the container's identity."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shlex
import time

import pytest

from cri.shims.client import ShimClient
from cri.shims.manager import ShimManager
from runtime import errors
from shim import protocol
from tests.integration.shim.helpers import ShimEnv, executor_argv, run

pytestmark = pytest.mark.root

# a seccomp profile that allows everything but mkdir (EPERM): visible as "Seccomp: 2" and as a failing mkdir
SECCOMP = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
           "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}


async def _running(env: ShimEnv, cid: str, **config: object) -> tuple[ShimManager, ShimClient]:
    manager = await env.started_manager()
    client, _ = await manager.create(env.config(cid, **config))  # type: ignore[arg-type]
    await client.start()
    return manager, client


async def _finish(manager: ShimManager, client: ShimClient, cid: str) -> None:
    try:
        await client.shutdown(force=True)
    finally:
        await manager.close()


def test_exec_sync_output_and_exit_code(shim_env: ShimEnv) -> None:
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sleep", "1000"], env=["PATH=/bin", "FROM_SPEC=yes"])

    async def scenario() -> None:
        manager, client = await _running(shim_env, cid)
        try:
            result = await client.exec_sync(["sh", "-c", "echo out $FROM_SPEC $EXTRA; echo err >&2; exit 7"],
                                            env=["EXTRA=added"])
            assert (result.exit_code, result.stdout, result.stderr) == (7, b"out yes added\n", b"err\n")
            big = await client.exec_sync(["sh", "-c", "head -c 3000000 /dev/zero"])
            assert big.stdout == b"\0" * 3000000 and big.exit_code == 0
            killed = await client.exec_sync(["sh", "-c", "kill -9 $$"])
            assert killed.exit_code == 137
            with pytest.raises(errors.CrispError):
                await client.exec_sync(["/no/such/program"])
        finally:
            await _finish(manager, client, cid)

    run(scenario())
    # the exec's output goes to its caller, not into the container's log
    assert b"out yes" not in (shim_env.logs / f"{cid}.log").read_bytes()


def test_an_exec_racing_the_containers_end_is_a_failed_precondition(shim_env: ShimEnv) -> None:
    """The container's init dies after the shim checked that it runs and before the executor execs (a kubelet's
    probe racing the container's end): the executor refuses, and the caller hears that the container exited, not
    that the shim failed."""
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sleep", "1000"])
    init_pid = shim_env.base / f"{cid}.init"
    executor = shim_env.base / f"{cid}.executor"
    # an executor that, asked to exec, first kills the container's init and waits until it is dead
    executor.write_text(f"""#!/bin/sh
case " $* " in *" exec "*)
    pid=$(cat {init_pid}); kill -9 "$pid"
    while grep -qs '^State:.*[RSD]' /proc/"$pid"/status; do sleep 0.01; done;;
esac
exec {shlex.join(executor_argv(shim_env.executor))} "$@"
""")
    executor.chmod(0o755)

    async def scenario() -> None:
        manager = await shim_env.started_manager()
        # the wrapper is a program of its own: the shim starts it (resident=0), which then runs the real executor
        client, _ = await manager.create(dataclasses.replace(shim_env.config(cid), executor=[str(executor)],
                                                             resident=0))
        try:
            await client.start()
            init_pid.write_text(str((await client.state()).pid))
            with pytest.raises(errors.FailedPrecondition, match="exited"):
                await client.exec_sync(["true"])
            assert (await client.wait(call_timeout=10)).signal == 9
        finally:
            await _finish(manager, client, cid)

    run(scenario())


def test_an_exec_stuck_before_its_exec_holds_up_nothing_else(builtin_env: ShimEnv) -> None:
    """The resident executor's exec is started by the shim itself, which reads its handshake in its loop: an exec
    whose process cannot get to its exec (here: the container's cgroup is frozen, so the process forked into it
    stops at birth) leaves the shim answering everything else, and finishes once it can. (runc and crun refuse
    an exec into a frozen container.)"""
    cid = builtin_env.new_id()
    builtin_env.bundle(cid, ["sleep", "1000"])
    freeze = builtin_env.cgroup_dir(cid) / "cgroup.freeze"

    async def scenario() -> None:
        manager, client = await _running(builtin_env, cid)
        try:
            freeze.write_text("1")
            deadline = time.monotonic() + 10
            while "frozen 1" not in (freeze.parent / "cgroup.events").read_text():
                assert time.monotonic() < deadline, "the container's cgroup did not freeze"
                await asyncio.sleep(0.01)
            stuck = asyncio.ensure_future(client.exec_sync(["sh", "-c", "echo done"]))
            await asyncio.sleep(0.5)
            assert not stuck.done()
            # a blocked shim would answer nothing until the exec's handshake timed out (a minute)
            state = await asyncio.wait_for(client.state(), 10)
            assert state.state == "running"
            freeze.write_text("0")
            result = await asyncio.wait_for(stuck, 30)
            assert (result.exit_code, result.stdout) == (0, b"done\n")
        finally:
            if freeze.exists():
                freeze.write_text("0")
            await _finish(manager, client, cid)

    run(scenario())


def test_exec_timeout_kills_its_processes(shim_env: ShimEnv) -> None:
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> None:
        manager, client = await _running(shim_env, cid)
        try:
            started = time.monotonic()
            result = await client.exec_sync(["sh", "-c", "sleep 1000 & sleep 1000; echo never"], exec_timeout=1)
            assert result.timed_out and result.exit_code == 137
            assert time.monotonic() - started < 30
            ps = await client.exec_sync(["ps", "-o", "pid,args"])
            sleepers = [line for line in ps.stdout.decode().splitlines() if "sleep 1000" in line]
            assert len(sleepers) == 1, ps.stdout  # only the container's own init
        finally:
            await _finish(manager, client, cid)

    run(scenario())


def test_exec_with_pty_stdin_and_resize(shim_env: ShimEnv) -> None:
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> None:
        manager, client = await _running(shim_env, cid)
        try:
            stream = await client.exec(["sh", "-c", "stty size; read a; stty size; read b; echo bye $b"],
                                       tty=True, stdin=True, width=90, height=20)
            assert stream.info["tty"] is True
            out = b""
            while b"20 90" not in out:
                item = await stream.read()
                assert item is not None
                out += item[1]
            await stream.resize(132, 43)
            await stream.write_stdin(b"go\n")
            while b"43 132" not in out:
                item = await stream.read()
                assert item is not None
                out += item[1]
            await client.resize(70, 11, exec_id=stream.info["exec_id"])
            await stream.write_stdin(b"now\n")
            while (item := await stream.read()) is not None:
                out += item[1]
            assert b"bye now" in out
            assert stream.exit is not None and stream.exit["exit_code"] == 0
            await stream.close()
            with pytest.raises(errors.NotFound):
                await client.resize(1, 1, exec_id=stream.info["exec_id"])
        finally:
            await _finish(manager, client, cid)

    run(scenario(), timeout=60)


def test_exec_with_pipes_and_stdin(shim_env: ShimEnv) -> None:
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> None:
        manager, client = await _running(shim_env, cid)
        try:
            stream = await client.exec(["sh", "-c", "cat; echo done >&2"], stdin=True)
            payload = os.urandom(300000)
            await stream.write_stdin(payload)
            await stream.close_stdin()
            got = {protocol.STREAM_STDOUT: b"", protocol.STREAM_STDERR: b""}
            while (item := await stream.read()) is not None:
                got[item[0]] += item[1]
            assert got[protocol.STREAM_STDOUT] == payload
            assert got[protocol.STREAM_STDERR] == b"done\n"
            assert stream.exit is not None and stream.exit["exit_code"] == 0
            await stream.close()
        finally:
            await _finish(manager, client, cid)

    run(scenario())


def _status_fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def test_exec_has_the_containers_identity(shim_env: ShimEnv) -> None:
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sleep", "1000"], uid=65534, gid=65534, caps=["CAP_KILL", "CAP_CHOWN"],
                    seccomp=SECCOMP, no_new_privileges=True)

    async def scenario() -> None:
        manager, client = await _running(shim_env, cid)
        try:
            init = _status_fields((await client.exec_sync(["cat", "/proc/1/status"])).stdout.decode())
            mine = await client.exec_sync(["cat", "/proc/self/status"])
            assert mine.exit_code == 0, mine.stderr
            fields = _status_fields(mine.stdout.decode())
            assert fields["Uid"].split() == ["65534"] * 4
            assert fields["Gid"].split() == ["65534"] * 4
            # CAP_CHOWN (0) and CAP_KILL (5): the container's sets, not the shim's full root set
            assert int(fields["CapBnd"], 16) == (1 << 0) | (1 << 5)
            assert fields["CapBnd"] == init["CapBnd"]
            assert fields["Seccomp"] == "2" and init["Seccomp"] == "2"
            assert fields["NoNewPrivs"] == "1"
            mkdir = await client.exec_sync(["mkdir", "/tmp/x"])
            assert mkdir.exit_code != 0  # seccomp says EPERM
            # the exec sees the container's PID namespace: its init is pid 1 there
            ps = await client.exec_sync(["cat", "/proc/1/cmdline"])
            assert ps.stdout.split(b"\0")[0] == b"sleep"
            hostname = await client.exec_sync(["hostname"])
            assert hostname.stdout == b"crisp-shimtest\n"
        finally:
            await _finish(manager, client, cid)

    run(scenario())


def test_shim_imports_nothing_heavy(runc_env: ShimEnv) -> None:
    """The shim's Python half (the shim until its container runs: then it hands over to crisp-monitor) is
    single-threaded and stdlib-only: no asyncio, grpc, protobuf, pyroute2. It carries crisp's own executor (run in
    forks of it: shim/executor.py), so the executor's stdlib modules (logging among them) and its own are there,
    imported once by the zygote and shared by every shim."""
    cid = runc_env.new_id()
    runc_env.bundle(cid, ["sleep", "1000"])

    async def scenario() -> dict[str, object]:
        manager = await runc_env.started_manager()
        client, _ = await manager.create(runc_env.config(cid))
        try:
            return await client.debug()
        finally:
            await _finish(manager, client, cid)

    info = run(scenario())
    modules = set(info["modules"])  # type: ignore[arg-type]
    for heavy in ("asyncio", "grpc", "h2", "google.protobuf", "pyroute2", "cri", "concurrent"):
        assert heavy not in modules, f"{heavy} is imported in the shim"
    # (threading is imported, by subprocess through ctypes.util in runtime.linux.syscalls; no thread is started)
    assert not any(m.startswith(("grpc", "h2", "hpack", "google", "pyroute2", "cri.", "prometheus")) for m in modules)
    assert info["threads"] == 1
    # the stdlib-only rule modules the shim shares with crispd (the bundle contract, error kinds, process start
    # times, the fail points), the executor with what it imports, and the pods' namespace work the zygote forks too
    # (runtime/namespaces/forked.py and what it uses): nothing of images, networks, cgroup drivers. The executor's
    # cgroup code, runtime.cgroups, is among them: imported by the zygote, never in a fork
    assert {"runtime.executor.main", "runtime.executor.container", "runtime.cgroups"} <= modules
    assert {m for m in modules if m.startswith("runtime") and not m.startswith(("runtime.executor",
                                                                                "runtime.cgroups"))} <= {
        "runtime", "runtime.version", "runtime.linux", "runtime.linux.syscalls", "runtime.bundle", "runtime.errors",
        "runtime.procs", "runtime.failpoints", "runtime.linux.idmap", "runtime.linux.syscalls.libseccomp",
        "runtime.linux.syscalls.bpf", "runtime.namespaces", "runtime.namespaces.sysctl", "runtime.undo",
        "runtime.namespaces.forked", "runtime.namespaces.nsinit", "runtime.namespaces.userns", "runtime.linux.sealed"}
    print(json.dumps(sorted(modules)))
