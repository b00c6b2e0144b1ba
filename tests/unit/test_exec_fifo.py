"""When the init's word on the exec fifo is complete (runtime.executor.lifecycle.take_word), the one rule that both
`crisp-executor start` (read_fifo, blocking) and the shim's loop (shim/start.py) follow; with real processes as
the init and a real fifo."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.executor import lifecycle
from runtime.executor.lifecycle import Word, read_fifo, take_word
from runtime.executor.state import FIFO_FAILED, FIFO_OK, State
from runtime.procs import process_start_time


def _init_state(pid: int) -> State:
    start = process_start_time(pid)
    assert start is not None
    return State(id="c1", bundle="/", pid=pid, pid_start=start)


@pytest.fixture
def live() -> Iterator[State]:
    """An init that lives for the whole test."""
    proc = subprocess.Popen(["sleep", "1000"])
    try:
        yield _init_state(proc.pid)
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def dead() -> State:
    """An init that has died (and was reaped)."""
    proc = subprocess.Popen(["sleep", "1000"])
    try:
        state = _init_state(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    return state


def test_the_word_is_complete_once_it_starts_with_ok(live: State) -> None:
    word = bytearray()
    assert take_word(word, FIFO_OK, live) is Word.COMPLETE
    assert word == FIFO_OK


def test_an_error_is_complete_at_eof_after_it(live: State) -> None:
    """The init wrote its error (in as many pieces as it takes) and closed the fifo."""
    word = bytearray()
    assert take_word(word, FIFO_FAILED, live) is Word.MORE
    assert take_word(word, None, live) is Word.MORE  # nothing to read: the init lives, wait
    assert take_word(word, b"hook failed", live) is Word.MORE
    assert take_word(word, b"", live) is Word.COMPLETE
    assert word == FIFO_FAILED + b"hook failed"


def test_eof_with_nothing_read_while_the_init_lives_is_no_writer_yet(live: State) -> None:
    word = bytearray()
    assert take_word(word, b"", live) is Word.NO_WRITER
    assert take_word(word, None, live) is Word.MORE
    assert word == b""


def test_the_word_is_complete_when_the_init_died_with_what_was_read(dead: State) -> None:
    nothing = bytearray()
    assert take_word(nothing, b"", dead) is Word.COMPLETE  # no word at all
    assert nothing == b""
    assert take_word(bytearray(), None, dead) is Word.COMPLETE
    part = bytearray()
    assert take_word(part, FIFO_FAILED, dead) is Word.MORE  # bytes came: read on, EOF follows
    assert take_word(part, None, dead) is Word.COMPLETE
    assert part == FIFO_FAILED


def _writer(fifo: Path, *pieces: bytes) -> subprocess.Popen[bytes]:
    """An init that opens the fifo for writing, writes `pieces` one by one and exits."""
    code = ("import os, sys, time\nfd = os.open(sys.argv[1], os.O_WRONLY)\n"
            "for piece in sys.argv[2:]:\n    os.write(fd, piece.encode())\n    time.sleep(0.05)\n")
    return subprocess.Popen([sys.executable, "-c", code, str(fifo), *(p.decode() for p in pieces)])


@pytest.mark.parametrize("pieces", [(FIFO_OK,), (FIFO_FAILED, b"hook #0: exit status 4")])
def test_read_fifo_returns_the_init_word(tmp_path: Path, pieces: tuple[bytes, ...]) -> None:
    fifo = tmp_path / "exec.fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    proc = _writer(fifo, *pieces)
    try:
        assert read_fifo(fd, _init_state(proc.pid)) == b"".join(pieces)
    finally:
        os.close(fd)
        proc.kill()
        proc.wait()


def test_read_fifo_of_an_init_that_died_before_its_word_is_empty(tmp_path: Path, dead: State) -> None:
    fifo = tmp_path / "exec.fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        assert read_fifo(fd, dead) == b""
    finally:
        os.close(fd)



def test_read_fifo_pauses_while_the_fifo_has_no_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EOF with nothing read while the init lives: read_fifo waits NO_WRITER_RETRY before it looks again (the death
    check included), instead of spinning. Here a writer came and went, so the fifo reads EOF at once; the init lives
    on, and writes its word once the third look has been taken."""
    fifo = tmp_path / "exec.fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    go_r, go_w = os.pipe()
    closed_r, closed_w = os.pipe()
    code = ("import os, sys\nfifo, go, closed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
            "os.close(os.open(fifo, os.O_WRONLY))\nos.write(closed, b'.')\nos.read(go, 1)\n"
            "os.write(os.open(fifo, os.O_WRONLY), b'0')\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(fifo), str(go_r), str(closed_w)],
                            pass_fds=(go_r, closed_w))
    events: list[str] = []
    real_start_time, real_sleep = lifecycle.process_start_time, lifecycle.time.sleep

    def start_time(pid: int) -> int | None:
        events.append("look")
        if events.count("look") == 3:
            os.write(go_w, b".")
        return real_start_time(pid)

    def sleep(seconds: float) -> None:
        events.append(f"sleep {seconds}")
        real_sleep(seconds)

    try:
        os.close(go_r)
        os.close(closed_w)
        assert os.read(closed_r, 1) == b"."
        state = _init_state(proc.pid)
        monkeypatch.setattr(lifecycle, "process_start_time", start_time)
        monkeypatch.setattr(lifecycle.time, "sleep", sleep)
        assert read_fifo(fd, state) == FIFO_OK
    finally:
        monkeypatch.undo()
        os.close(fd)
        os.close(go_w)
        os.close(closed_r)
        proc.kill()
        proc.wait()
    assert events[:6] == ["look", f"sleep {lifecycle.NO_WRITER_RETRY}"] * 3
