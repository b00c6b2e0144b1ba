"""Container output through the shim: the CRI log (every byte, in order, P/F tags), rotation, attach, pty."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re

import pytest

from runtime import errors
from shim import protocol
from tests.integration.shim.helpers import ShimEnv, joined_output, parse_cri_log, run

pytestmark = pytest.mark.root

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


def _run_to_exit(env: ShimEnv, cid: str, **config: object) -> int:
    async def scenario() -> int:
        async with env.running_manager() as manager:
            client, _ = await manager.create(env.config(cid, **config))  # type: ignore[arg-type]
            await client.start()
            status = await manager.wait_exit(cid)
            await client.shutdown()
            return status.exit_code
    return run(scenario())


def _size(path: os.PathLike[str]) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return -1


async def _grown(path: os.PathLike[str], size: int) -> None:
    for _ in range(600):
        if _size(path) >= size:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} did not grow to {size} bytes")


def test_fast_huge_output_keeps_every_byte(shim_env: ShimEnv) -> None:
    """~40 MB as fast as the container can write, lines of every length up to 3x the max: nothing lost or
    reordered, long lines split into P parts of at most max_line bytes, every timestamp RFC 3339 nano."""
    cid = shim_env.new_id()
    max_line = 1000
    # line i is 'i' padded to a length that cycles from 0 to 3*max_line; the last line has no newline
    script = ("i=0; while [ $i -lt 12000 ]; do n=$(( (i * 37) % 3000 )); "
              "head -c $n /dev/zero | tr '\\0' x; echo \" $i\"; i=$((i+1)); done; "
              "head -c 100000 /dev/urandom | base64 -w 0 >&2; printf tail")
    shim_env.bundle(cid, ["sh", "-c", script])
    assert _run_to_exit(shim_env, cid, log_max_line=max_line) == 0
    log = shim_env.logs / f"{cid}.log"
    entries = parse_cri_log(log)
    for timestamp, _, tag, content in entries:
        assert TIMESTAMP.match(timestamp), timestamp
        assert len(content) <= max_line
        assert tag == "F" or content  # a P part is never empty
    timestamps = [e[0] for e in entries]
    assert timestamps == sorted(timestamps)
    expected = b"".join(b"x" * ((i * 37) % 3000) + f" {i}\n".encode() for i in range(12000)) + b"tail"
    got = joined_output(log, "stdout")
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(expected).hexdigest(), (len(got), len(expected))
    # the unterminated last line is a P part (the kubelet adds no newline)
    stdout_entries = [e for e in entries if e[1] == "stdout"]
    assert stdout_entries[-1][2:] == ("P", b"tail")
    err = joined_output(log, "stderr")
    assert len(err) == len(b"x" * 133336) and b"\n" not in err  # 100000 bytes base64 = 133336 chars


def test_no_log_path_drains_and_discards(shim_env: ShimEnv) -> None:
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sh", "-c", "head -c 5000000 /dev/zero; echo done"])
    assert _run_to_exit(shim_env, cid, log=False) == 0  # a blocked writer would never exit
    assert list(shim_env.logs.iterdir()) == []


def test_reopen_log_after_rename(shim_env: ShimEnv) -> None:
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.01; done"])
    log = shim_env.logs / f"{cid}.log"

    async def scenario() -> None:
        async with shim_env.running_manager() as manager:
            client, _ = await manager.create(shim_env.config(cid))
            await client.start()
            await _grown(log, 100)
            rotated = log.with_name(log.name + ".1")
            os.rename(log, rotated)
            await client.reopen_log()
            assert log.exists()  # the new file exists when the call returns
            await _grown(log, 100)
            await client.kill(9)
            await manager.wait_exit(cid)
            await client.shutdown()
            old = joined_output(rotated).decode().split("\n")[:-1]
            new = joined_output(log).decode().split("\n")[:-1]
            numbers = [int(line.split()[1]) for line in old + new]
            assert numbers == list(range(len(numbers)))  # nothing lost across the rotation, nothing twice
            assert old and new

    run(scenario())


def test_attach_pipes_with_stdin_once_and_two_attachers(shim_env: ShimEnv) -> None:
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sh", "-c", "while read line; do echo got $line; echo err $line >&2; done; echo bye"])

    async def scenario() -> None:
        async with shim_env.running_manager() as manager:
            client, _ = await manager.create(shim_env.config(cid, stdin=True, stdin_once=True))
            watcher = await client.attach(stdout=True, stderr=False)
            stream = await client.attach(stdin=True)
            await client.start()
            await stream.write_stdin(b"one\ntwo\n")
            seen: dict[int, bytes] = {protocol.STREAM_STDOUT: b"", protocol.STREAM_STDERR: b""}
            while b"got two\n" not in seen[1] or b"err two\n" not in seen[2]:
                item = await stream.read()
                assert item is not None
                seen[item[0]] += item[1]
            assert seen[1] == b"got one\ngot two\n"
            await stream.close()  # stdin_once: the end of this session closes the container's stdin
            status = await manager.wait_exit(cid)
            assert status.exit_code == 0
            watched = b""
            while (item := await watcher.read()) is not None:
                assert item[0] == protocol.STREAM_STDOUT
                watched += item[1]
            assert watched == b"got one\ngot two\nbye\n"
            assert watcher.exit is not None and watcher.exit["exit_code"] == 0
            with pytest.raises(errors.FailedPrecondition):
                await client.attach()
            await client.shutdown()

    run(scenario())
    assert joined_output(shim_env.logs / f"{cid}.log") == b"got one\ngot two\nbye\n"


def test_attach_tty_and_resize(shim_env: ShimEnv) -> None:
    cid = shim_env.new_id()
    shim_env.bundle(cid, ["sh", "-c", "stty size; while read line; do stty size; done"], tty=True)

    async def scenario() -> None:
        async with shim_env.running_manager() as manager:
            client, _ = await manager.create(shim_env.config(cid, stdin=True))
            await client.resize(100, 30)
            stream = await client.attach(stdin=True)
            assert stream.info["tty"] is True
            await client.start()
            out = b""
            while b"30 100" not in out:
                item = await stream.read()
                assert item is not None and item[0] == protocol.STREAM_STDOUT
                out += item[1]
            await stream.resize(120, 40)
            await stream.write_stdin(b"x\n")
            while b"40 120" not in out:
                item = await stream.read()
                assert item is not None
                out += item[1]
            await client.resize(81, 25)
            await stream.write_stdin(b"y\n")
            while b"25 81" not in out:
                item = await stream.read()
                assert item is not None
                out += item[1]
            await client.kill(9)
            await manager.wait_exit(cid)
            await stream.close()
            await client.shutdown()

    run(scenario())
    log = (shim_env.logs / f"{cid}.log").read_bytes()
    assert b" stdout F 30 100\r" in log or b" stdout P 30 100" in log, log[:500]
