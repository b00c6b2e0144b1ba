"""The container's output in the CRI log, written by crisp-monitor: the lines must be exactly what
shim.io.cri_log.format_chunk makes of the same chunks (one timestamp per chunk, P parts, max_line), nothing may be
lost, and reopen_log follows a rename as the kubelet's rotation does."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from shim.io.cri_log import format_chunk
from tests.integration.monitor.harness import Monitor, error_of, wait_for

MakeMonitor = Callable[..., Monitor]
LINE = re.compile(rb"(\S+) (stdout|stderr) ([PF]) (.*)\n", re.S)


def chunks_of(log: bytes) -> list[tuple[bytes, bytes, bytes, bytes]]:
    """The log as (timestamp, stream, chunk, its log lines): consecutive lines with one timestamp and stream are
    the lines of one chunk read from the container."""
    groups: list[tuple[bytes, bytes, bytearray, bytearray]] = []
    for raw in log.splitlines(keepends=True):
        match = LINE.fullmatch(raw)
        assert match is not None, f"not a CRI log line: {raw!r}"
        stamp, stream, tag, content = match.groups()
        if not groups or groups[-1][:2] != (stamp, stream):
            groups.append((stamp, stream, bytearray(), bytearray()))
        groups[-1][2].extend(content + (b"\n" if tag == b"F" else b""))
        groups[-1][3].extend(raw)
    return [(s, st, bytes(c), bytes(lines)) for s, st, c, lines in groups]


def check_log(log: bytes, max_line: int, expected: dict[bytes, bytes]) -> int:
    """Every chunk's lines are format_chunk's; the chunks of each stream add up to what the init wrote. Returns
    how many chunks there were."""
    got = {b"stdout": b"", b"stderr": b""}
    groups = chunks_of(log)
    for stamp, stream, chunk, lines in groups:
        assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", stamp), stamp
        assert format_chunk(stream, chunk, stamp, max_line) == lines, (stream, chunk)
        got[stream] += chunk
    assert got == {b"stdout": expected.get(b"stdout", b""), b"stderr": expected.get(b"stderr", b"")}
    return len(groups)


def test_lines_parts_and_tails_as_format_chunk_writes_them(monitors: MakeMonitor) -> None:
    # each piece is written once the one before is in the log: one piece, one chunk read by the monitor
    pieces = [
        (r"printf 'hello\nworld\n'", b"stdout F world\n"),
        # lines of max_line (64) bytes, one more, two max_lines, one more than that, and a short one, in one write
        ("printf '%s\\n%s\\n%s\\n%s\\nend\\n' $(printf 'a%.0s' $(seq 64)) $(printf 'b%.0s' $(seq 65)) "
         "$(printf 'c%.0s' $(seq 128)) $(printf 'd%.0s' $(seq 129))", b"stdout F end\n"),
        ("printf 'tail-without-newline'", b"stdout P tail-without-newline\n"),
        ("printf '%s' $(printf 't%.0s' $(seq 150))", b"stdout P " + b"t" * 22 + b"\n"),  # longer than max_line
        (r"printf 'err line\n\nafter an empty line\n' >&2", b"stderr F after an empty line\n"),
        (r"printf '\n'", None),
    ]
    m = monitors("; read x <&3; ".join(script for script, _ in pieces), log_max_line=64)
    assert m.log_path is not None
    log_path = m.log_path
    for _, last_line in pieces[:-1]:
        assert last_line is not None
        wait_for(lambda end=last_line: log_path.read_bytes().endswith(end), f"{last_line!r} in the log")
        m.trigger("go")
    m.call("wait")
    expected = {
        b"stdout": b"hello\nworld\n" + b"a" * 64 + b"\n" + b"b" * 65 + b"\n" + b"c" * 128 + b"\n" + b"d" * 129 +
        b"\nend\n" + b"tail-without-newline" + b"t" * 150 + b"\n",
        b"stderr": b"err line\n\nafter an empty line\n",
    }
    log = log_path.read_bytes()
    assert check_log(log, 64, expected) == len(pieces)
    # the parts a long line makes, as the kubelet will read them
    assert b" stdout P " + b"d" * 64 + b"\n" in log and b" stdout F d\n" in log
    assert b" stdout F " + b"a" * 64 + b"\n" in log
    assert b" stdout P tail-without-newline\n" in log
    assert log.endswith(b" stdout F \n")  # the newline that ends the unterminated tail: an empty F line


def test_much_output_is_all_in_the_log(monitors: MakeMonitor) -> None:
    """Several reads per wake-up and chunks of up to 128 KiB: nothing lost, every chunk formatted right; a line
    longer than the default max_line too."""
    m = monitors("seq 1 200000; head -c 300000 /dev/zero | tr '\\0' z; echo; seq 1 1000 >&2")
    status = m.call("wait")["status"]
    assert status["exit_code"] == 0
    expected_out = "".join(f"{i}\n" for i in range(1, 200001)).encode() + b"z" * 300000 + b"\n"
    expected_err = "".join(f"{i}\n" for i in range(1, 1001)).encode()
    assert m.log_path is not None
    chunks = check_log(m.log_path.read_bytes(), 16 * 1024, {b"stdout": expected_out, b"stderr": expected_err})
    assert chunks > 1


def test_reopen_log_after_a_rename(monitors: MakeMonitor) -> None:
    m = monitors("echo one; read x <&3; echo two; read x <&3; echo three")
    assert m.log_path is not None
    wait_for(lambda: "one" in m.log_text(), "the first line")
    rotated = Path(f"{m.log_path}.1")
    m.log_path.rename(rotated)
    m.trigger("go")
    # until reopen_log the monitor writes to the file it has open: the renamed one
    wait_for(lambda: "two" in rotated.read_text(), "the second line in the renamed file")
    assert m.call("reopen_log") == {"v": 1, "ok": True}
    assert m.log_path.exists() and m.log_path.read_text() == ""
    m.trigger("go")
    m.call("wait")
    assert [line.split(" ", 3)[3] for line in rotated.read_text().splitlines()] == ["one", "two"]
    assert [line.split(" ", 3)[3] for line in m.log_path.read_text().splitlines()] == ["three"]


def test_reopen_log_that_cannot_be_opened(monitors: MakeMonitor, base: Path) -> None:
    logs = base / "logs"
    logs.mkdir()
    m = monitors("read x <&3", log_path=str(logs / "c.log"))
    logs.joinpath("c.log").unlink()
    logs.rmdir()
    assert error_of(m.call("reopen_log")) == (
        "Internal", f"{m.id}: cannot reopen the log {logs / 'c.log'}: No such file or directory")


def test_without_a_log_output_is_drained(monitors: MakeMonitor) -> None:
    m = monitors("head -c 3000000 /dev/zero; echo done", log=False)
    assert m.call("wait")["status"]["exit_code"] == 0  # it could write everything: someone read it
    assert m.call("reopen_log") == {"v": 1, "ok": True}


def test_a_failing_log_is_reported_once_and_output_still_flows(monitors: MakeMonitor) -> None:
    """Writes to /dev/full fail (ENOSPC): one warning in shim.log, attachers still get the output."""
    m = monitors("echo a; read x <&3; echo b; read x <&3; echo c", log_path="/dev/full")
    attacher = m.client()
    attacher.request("attach", stdout=True, stderr=True)
    assert attacher.line()["ok"] is True
    m.trigger("go")
    m.trigger("go")
    received = b""
    while (frame := attacher.frame()) is not None and frame[0] != 4:
        received += frame[1]
    assert received.endswith(b"b\nc\n")
    warnings = [line for line in m.shim_log().splitlines() if "cannot write the container log" in line]
    assert len(warnings) == 1, warnings
    assert warnings[0].endswith("cannot write the container log /dev/full: No space left on device; output is "
                                "dropped until the log is reopened")


def test_output_of_processes_that_outlive_the_init(monitors: MakeMonitor) -> None:
    """The init's exit drains what is in the pipes without waiting for their end (a child still holds them); what
    that child writes later still goes to the log."""
    m = monitors("(read x <&3; echo late) & echo early")
    status = m.call("wait")["status"]
    assert status["exit_code"] == 0
    assert "stdout F early" in m.log_text()
    m.trigger("go")
    wait_for(lambda: "stdout F late" in m.log_text(), "the orphan's output")
