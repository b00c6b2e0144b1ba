"""The shim's pure parts: the CRI log format, configs, status files, error kinds, cgroup2 discovery."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cri.shims.client import ShimInternalError, shim_error
from runtime import errors
from shim import protocol
from shim.io.cri_log import CriLog, format_chunk, format_timestamp
from shim.protocol import ExitStatus, ShimConfig, ShimError

TS = b"2026-01-02T03:04:05.000000006Z"


def lines(chunk: bytes, max_line: int = 16384) -> list[str]:
    return format_chunk(b"stdout", chunk, TS, max_line).decode().split("\n")[:-1]


def test_timestamp_is_rfc3339_nano_utc() -> None:
    assert format_timestamp(1_767_323_045_000_000_006) == TS
    assert format_timestamp(0) == b"1970-01-01T00:00:00.000000000Z"


def test_full_and_partial_lines() -> None:
    ts = TS.decode()
    assert lines(b"a\nbb\n") == [f"{ts} stdout F a", f"{ts} stdout F bb"]
    assert lines(b"a\npartial") == [f"{ts} stdout F a", f"{ts} stdout P partial"]
    assert lines(b"\n") == [f"{ts} stdout F "]
    assert lines(b"") == []


@pytest.mark.parametrize("length", [1, 3, 4, 5, 8, 9, 13])
def test_long_lines_split_into_parts_of_max_line(length: int) -> None:
    body = bytes(range(97, 97 + length))
    got = lines(body + b"\nz", max_line=4)
    tags = [line.split(" ")[2] for line in got]
    contents = [line.split(" ", 3)[3] for line in got]
    assert all(len(c) <= 4 for c in contents)
    assert "".join(contents[:-1]).encode() == body and contents[-1] == "z"
    parts = -(-length // 4)
    assert tags == ["P"] * (parts - 1) + ["F"] + ["P"]


def test_format_keeps_bytes_exactly() -> None:
    chunk = bytes(range(256)).replace(b"\n", b"") * 3 + b"\n" + b"\xff\x00 x"
    rebuilt = bytearray()
    for line in format_chunk(b"stderr", chunk, TS, 100).split(b"\n")[:-1]:
        _, stream, tag, content = line.split(b" ", 3)
        assert stream == b"stderr"
        rebuilt += content + (b"\n" if tag == b"F" else b"")
    assert bytes(rebuilt) == chunk


def test_cri_log_reopen_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    log = CriLog(str(path), 16)
    log.write(b"stdout", b"one\n", now_ns=0)
    path.rename(tmp_path / "c.log.1")
    log.reopen()
    assert path.exists() and path.read_bytes() == b""
    log.write(b"stdout", b"two\n", now_ns=0)
    log.close()
    assert path.read_bytes() == b"1970-01-01T00:00:00.000000000Z stdout F two\n"


def test_cri_log_without_path_discards() -> None:
    log = CriLog("", 16)
    log.write(b"stdout", b"x\n")
    log.reopen()
    log.close()


def test_config_validation() -> None:
    good = ShimConfig(id="abc", bundle="/run/x", executor=["runc"], executor_root="/run/r")
    assert ShimConfig.from_json(json.loads(json.dumps(good.to_json()))) == good
    for bad in ({"id": "a/b"}, {"bundle": "rel"}, {"executor": []}, {"log_path": "rel.log"},
                {"log_max_line": 10}, {"resident": 2}, {"resident": -1}, {"resident": True}):
        with pytest.raises(ShimError) as failure:
            ShimConfig.from_json({**good.to_json(), **bad})
        assert failure.value.kind == "InvalidArgument"
    with pytest.raises(ShimError):
        ShimConfig.from_json({**good.to_json(), "surprise": 1})


def test_status_file_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "status.json")
    assert protocol.read_status_file(path) is None
    status = ExitStatus(exit_code=137, signal=9, started_at=1, finished_at=2, oom_killed=True)
    protocol.write_status_file(path, "c1", 42, status)
    assert protocol.read_status_file(path) == status
    assert json.loads(Path(path).read_text())["pid"] == 42
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_wait_status_to_exit() -> None:
    assert protocol.wait_status_to_exit(3 << 8) == (3, 0)
    assert protocol.wait_status_to_exit(9) == (137, 9)


def test_error_kinds_map_back() -> None:
    assert isinstance(shim_error({"kind": "NotFound", "message": "x"}, ""), errors.NotFound)
    assert isinstance(shim_error({"kind": "FailedPrecondition"}, ""), errors.FailedPrecondition)
    assert isinstance(shim_error({"kind": "Internal"}, ""), ShimInternalError)
    assert isinstance(shim_error({"kind": "CrispError"}, ""), ShimInternalError)
    assert isinstance(shim_error({"kind": "bogus"}, ""), ShimInternalError)
    assert str(shim_error(None, "create failed")) == "create failed"

