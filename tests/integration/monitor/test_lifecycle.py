"""crisp-monitor watching a container's init: state, wait, kill, the exit (status.json, OOM kills, orphans),
hang points, and the replies to requests it refuses. The init is a real process (`/bin/sh -c`), the monitor the
real binary, every request goes over its real socket."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shim import protocol
from shim.protocol import ExitStatus, read_status_file
from tests.integration.monitor.harness import Monitor, error_of, parent_of, wait_for

MakeMonitor = Callable[..., Monitor]
# the init waits on the fifo "go", then exits with the code it reads from it
WAIT_THEN_EXIT = 'read code <&3; exit "$code"'


def test_state_wait_and_the_exit_code(monitors: MakeMonitor) -> None:
    m = monitors(WAIT_THEN_EXIT)
    state = m.call("state")
    assert state["ok"] is True
    assert {k: state[k] for k in ("id", "state", "pid", "shim_pid")} == {
        "id": m.id, "state": "running", "pid": m.init_pid, "shim_pid": m.pid}
    assert "status" not in state
    started_at = state["started_at"]
    assert started_at > 0
    m.running_monitor()
    assert Path(f"/proc/{m.pid}/comm").read_text() == "crisp-shim\n"
    # one string, as runtime.procs.set_process_title makes the Python shim's command line
    assert Path(f"/proc/{m.pid}/cmdline").read_bytes().rstrip(b"\0") == b"crisp-shim " + m.id.encode()

    waiter = m.client()
    waiter.request("wait")
    m.trigger("go", b"7\n")
    reply = waiter.line()
    status = reply["status"]
    assert reply["ok"] is True
    assert status["exit_code"] == 7 and status["signal"] == 0 and status["oom_killed"] is False
    assert status["started_at"] == started_at and status["finished_at"] > 0
    assert (status["reason"], status["message"]) == ("", "")
    assert list(status) == list(ExitStatus(0).to_json())  # the keys in Python's order

    # after the exit: wait answers at once, state has the status
    assert m.call("wait") == reply
    state = m.call("state")
    assert state["state"] == "stopped" and state["status"] == status
    # the init was reaped by the monitor (its subreaper and parent)
    assert not Path(f"/proc/{m.init_pid}").exists()
    assert f"container {m.id} exited: code 7" in m.shim_log()


def test_status_file_is_written_as_python_writes_it(monitors: MakeMonitor) -> None:
    m = monitors(WAIT_THEN_EXIT)
    m.trigger("go", b"3\n")
    status = m.call("wait")["status"]
    path = m.bundle / "status.json"
    text = path.read_text()
    body = json.loads(text)
    assert body == {"version": 1, "id": m.id, "pid": m.init_pid, **status}
    assert text == json.dumps(body, sort_keys=True) + "\n"  # protocol.write_status_file's formatting
    assert read_status_file(str(path)) == ExitStatus.from_json(status)
    assert [p.name for p in m.bundle.iterdir() if ".tmp" in p.name] == []


def test_kill_signals_the_init_and_the_status_says_which(monitors: MakeMonitor) -> None:
    m = monitors("read x <&3")
    waiter = m.client()
    waiter.request("wait")
    assert m.call("kill", signal=signal.SIGTERM) == {"v": 1, "ok": True}
    status = waiter.line()["status"]
    assert (status["exit_code"], status["signal"]) == (128 + signal.SIGTERM, signal.SIGTERM)
    assert f"exited: code {128 + signal.SIGTERM} (signal {signal.SIGTERM})" in m.shim_log()
    # stopped: kill answers ok without signalling anything
    assert m.call("kill", signal=signal.SIGKILL) == {"v": 1, "ok": True}
    assert m.call("state")["status"] == status


def test_kill_without_a_signal_is_sigterm(monitors: MakeMonitor) -> None:
    m = monitors("read x <&3")
    assert m.call("kill")["ok"] is True
    assert m.call("wait")["status"]["signal"] == signal.SIGTERM


@pytest.mark.parametrize("sig, shown", [(0, "0"), (65, "65"), ("TERM", "'TERM'"), (None, "None"), (1.5, "1.5")])
def test_kill_with_a_bad_signal(monitors: MakeMonitor, sig: object, shown: str) -> None:
    m = monitors("read x <&3")
    assert error_of(m.call("kill", signal=sig)) == ("InvalidArgument", f"bad signal {shown}")
    assert m.call("state")["state"] == "running"


def test_orphans_are_reaped(monitors: MakeMonitor) -> None:
    """The init's child outlives it: the monitor, as the subreaper, reaps it when it ends."""
    m = monitors("sleep 1000 & echo $! > orphan.pid; read x <&3")
    orphan = int(wait_for(lambda: (m.bundle / "orphan.pid").exists() and (m.bundle / "orphan.pid").read_text(),
                          "the orphan's pid"))
    m.trigger("go")
    m.call("wait")
    assert wait_for(lambda: parent_of(orphan) == m.pid, "the orphan re-parented to the monitor")
    os.kill(orphan, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{orphan}").exists(), "the orphan reaped")
    assert m.call("state")["state"] == "stopped"


def test_an_init_that_exited_during_the_hand_over(monitors: MakeMonitor) -> None:
    """The init is gone before the monitor runs: its first waitpid finds it."""
    m = monitors("exit 5")
    wait_for(lambda: _zombie_or_gone(m.init_pid), "the init's exit")
    assert m.call("wait")["status"]["exit_code"] == 5


def _zombie_or_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def test_oom_killed_by_the_containers_cgroup_count(monitors: MakeMonitor, base: Path) -> None:
    """memory.events' oom_kill above the count taken before the start: oom_killed (a plain dir stands in for the
    cgroup, the monitor only reads the file)."""
    cgroup = base / "pod" / "ctr"
    cgroup.mkdir(parents=True)
    (cgroup / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n")
    m = monitors("read x <&3", oom={"cgroup_dir": str(cgroup), "before": 1, "parent_before": 0})
    m.call("kill", signal=signal.SIGKILL)
    status = m.call("wait")["status"]
    assert status["oom_killed"] is True and status["signal"] == signal.SIGKILL
    assert "oom-killed" in m.shim_log()


def test_not_oom_killed_when_the_count_did_not_move(monitors: MakeMonitor, base: Path) -> None:
    cgroup = base / "pod" / "ctr"
    cgroup.mkdir(parents=True)
    (cgroup / "memory.events").write_text("oom 0\noom_kill 4\n")
    m = monitors("read x <&3", oom={"cgroup_dir": str(cgroup), "before": 4, "parent_before": 0})
    m.call("kill", signal=signal.SIGKILL)
    assert m.call("wait")["status"]["oom_killed"] is False


@pytest.mark.parametrize("sig, parent_count, expected", [
    (signal.SIGKILL, 3, True),    # gone cgroup, SIGKILL, the parent counted one more: ours
    (signal.SIGKILL, 2, False),   # the parent's count did not move
    (signal.SIGTERM, 3, False),   # not killed by SIGKILL
])
def test_oom_through_the_parent_when_the_cgroup_is_gone(monitors: MakeMonitor, base: Path, sig: int,
                                                        parent_count: int, expected: bool) -> None:
    parent = base / "pod"
    parent.mkdir()
    (parent / "memory.events").write_text(f"oom 0\noom_kill {parent_count}\n")
    m = monitors("read x <&3", oom={"cgroup_dir": str(parent / "gone"), "before": 0, "parent_before": 2})
    m.call("kill", signal=sig)
    assert m.call("wait")["status"]["oom_killed"] is expected


def test_hang_point_at_the_exit(monitors: MakeMonitor) -> None:
    """hang_points ["shim.exited"]: the status is written, then the monitor stops (nobody hears of the exit)."""
    m = monitors("read x <&3", hang_points=("shim.exited",))
    waiter = m.client()
    waiter.request("wait")
    m.trigger("go")
    wait_for(lambda: "debug: stopped at shim.exited until killed" in m.shim_log(), "the hang point")
    assert (m.bundle / "status.json").exists()
    waiter.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        waiter.line()
    assert m.alive()


def test_debug(monitors: MakeMonitor) -> None:
    m = monitors("read x <&3")
    reply = m.call("debug")
    assert reply == {"v": 1, "ok": True, "pid": m.pid, "modules": [], "threads": 1, "version": reply["version"],
                     "monitor": True}
    from runtime.version import VERSION
    assert reply["version"] == VERSION  # scripts/build-monitor passes it


def test_memory(monitors: MakeMonitor) -> None:
    """The monitor's PSS, printed (issue 17's budget is 2 MB; sizes are measured, not asserted)."""
    m = monitors("while read line; do echo \"$line\"; done <&3", stdin=False)
    m.running_monitor()
    for _ in range(3):
        m.call("state")
    idle = m.memory_kib()["pss"]
    attacher = m.client()
    attacher.request("attach", stdout=True, stderr=True)
    attacher.line()
    m.trigger("go", b"x" * 60000 + b"\n")
    while True:
        frame = attacher.frame()
        assert frame is not None
        if frame[1].endswith(b"\n"):
            break
    busy = m.memory_kib()["pss"]
    attacher.close()
    time.sleep(1.5)  # the monitor gives its scratch buffers back after a second without I/O
    print(f"\ncrisp-monitor PSS (pid {m.pid}, KiB): {idle} idle, {busy} after output and an attach, "
          f"{m.memory_kib()['pss']} idle again")


def test_create_and_start_are_refused(monitors: MakeMonitor) -> None:
    m = monitors("read x <&3")
    assert error_of(m.call("create")) == ("AlreadyExists", f"container {m.id} is already running")
    assert error_of(m.call("start")) == ("FailedPrecondition", f"container {m.id} is running, not created")
    m.trigger("go")
    m.call("wait")
    assert error_of(m.call("start")) == ("FailedPrecondition", f"container {m.id} is stopped, not created")


# lines that are not a JSON object: the monitor's reply must say what json.loads says
BAD_JSON = (
    b"nonsense", b"", b" ", b'{"v":1,', b'{"v": 1} x', b'{"a" 1}', b'{"a":1,}', b"[1 2]", b"[1,]", b'{"a":}', b'"abc',
    b'"a\x01b"', b'"a\\qb"', b'"\\u12"', b'"\\u12g4"', b'"\\', b"-", b"01", b"1.", b"1e", b"tru", b"nul",
    b'{"a":1 "b":2}', b"{,}", b"[", b"{", b'{"a"', b'{"a":', b"[1,2", b'{"a":1}}', b"[-]", b"[- 1]",
    b'{"a":[1,{"b":tru}]}', b'"\t"', b"[1, 2]", b'"x"', b"NaN", b"[Infinity]", b"-Infinity", b"  [1]  x",
    # not UTF-8: the decoder's words
    b"\xff", b'{"a":"\xc3"}', b"\xe1\x80\x41", b"\xe1\x80", b"\xe1", b"\xe0\x80\x80", b"\xf4\x90\x80\x80",
    b"\xf0\x9f\x98", b'"\xc0\xaf"',
)


def test_bad_requests(monitors: MakeMonitor) -> None:
    m = monitors("read x <&3")
    c = m.client()
    for line in BAD_JSON:
        try:
            json.loads(line)
            python_says = "bad request: not an object"
        except ValueError as exc:
            python_says = f"bad request: {exc}"
        c.send(line + b"\n")
        assert error_of(c.line()) == ("InvalidArgument", python_says), line
    c.send(b'{"op": "state"}\n')
    assert error_of(c.line()) == ("InvalidArgument", "protocol version None is not 1")
    c.send(b'{"v": 2, "op": "state"}\n')
    assert error_of(c.line()) == ("InvalidArgument", "protocol version 2 is not 1")
    assert error_of(c.call("nope")) == ("Unimplemented", "unknown operation 'nope'")
    c.send(b'{"v": 1, "op": 7}\n')
    assert error_of(c.line()) == ("Unimplemented", "unknown operation 7")
    c.send(b'{"v": 1}\n')
    assert error_of(c.line()) == ("Unimplemented", "unknown operation None")
    c.send(b'{"v": 1.0, "op": "caf\xc3\xa9"}\n')  # 1.0 == 1 in Python; a message with a non-ASCII name
    assert c.raw_line() == protocol.encode(protocol.reply_error("Unimplemented", "unknown operation 'caf\u00e9'"))
    # a name that Python's repr and then json.dumps both escape (repr leaves only \n \r \t as such)
    odd = 'q"b\\n\nr\rt\tb\bf\f\x01\x1f\x7f\U0001f600'
    c.send(b'{"v": 1, "op": %s}\n' % json.dumps(odd, ensure_ascii=False).encode())
    assert c.raw_line() == protocol.encode(protocol.reply_error("Unimplemented", f"unknown operation {odd!r}"))
    for sig, shown in ((b"NaN", "nan"), (b"-Infinity", "-inf"), (b"1e400", "inf"), (b"1e16", "1e+16"),
                       (b"123456789012345678901234567890", "123456789012345678901234567890"), (b"[1, {}]", "[1, {}]"),
                       (b'{"a": "b\'"}', '{\'a\': "b\'"}'), (b"false", None)):
        c.send(b'{"v":1,"op":"kill","signal":%s}\n' % sig)
        if shown is None:  # a bool is an int to Python: False is 0, a bad signal
            shown = "False"
        assert error_of(c.line()) == ("InvalidArgument", f"bad signal {shown}"), sig
    # several requests in one write: one reply each, in order
    c.send(b'{"v":1,"op":"state"}\n{"v":1,"op":"debug"}\n')
    assert c.line()["state"] == "running" and c.line()["threads"] == 1
    # the connection still works after all that
    assert c.call("state")["ok"] is True


def test_a_request_line_too_long(monitors: MakeMonitor) -> None:
    m = monitors("read x <&3")
    c = m.client()
    try:
        c.send(b"x" * ((1 << 20) + (1 << 17)))
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed while we were still writing: the reply was sent first
    assert error_of(c.line()) == ("InvalidArgument", "request line too long")
    assert c.at_eof()
    assert m.call("state")["ok"] is True


def test_bad_hand_over_state(monitors: MakeMonitor) -> None:
    m = monitors("true", override={"pid": "x"})
    assert m.wait_exit() == 1
    assert "bad hand-over state: pid: missing or not an integer" in m.shim_log()


def test_hand_over_of_an_exited_container(monitors: MakeMonitor) -> None:
    """The Python shim saw the exit (and wrote status.json) before it handed over: the monitor answers from the
    status it was given, to the waiter and the attacher it was handed too."""
    status = {"exit_code": 3, "signal": 0, "started_at": 5, "finished_at": 6, "oom_killed": False,
              "reason": "", "message": "caf\u00e9"}
    # every escape json.dumps writes: quote, backslash, the two-character ones, other controls, a surrogate pair
    status["message"] += ' q"b\\n\nr\rt\tb\bf\f\x01\x1f\x7f\U0001f600'
    m = monitors("true", conns=({"mode": "wait"}, {"mode": "attach", "stdin": False, "streams": [1, 2]}),
                 override={"state": "stopped", "status": status, "started_at": 5})
    waiting = m.client()
    waiting.request("wait")
    attached = m.client()
    assert attached.call("attach")["ok"] is True
    assert waiting.line() == {"v": 1, "ok": True, "status": status}
    assert attached.frame() == (4, json.dumps(status).encode())
    assert attached.at_eof()
    state = m.call("state")
    assert (state["state"], state["status"], state["started_at"]) == ("stopped", status, 5)
    assert not (m.bundle / "status.json").exists()  # the Python shim's to write, not rewritten
    assert error_of(m.call("start")) == ("FailedPrecondition", f"container {m.id} is stopped, not created")


def test_start_of_a_container_that_exited_before_it_was_started(monitors: MakeMonitor) -> None:
    status = {"exit_code": 2, "signal": 0, "started_at": 0, "finished_at": 6, "oom_killed": False,
              "reason": "", "message": ""}
    m = monitors("true", override={"state": "stopped", "status": status, "started_at": 0})
    assert error_of(m.call("start")) == (
        "FailedPrecondition", f"container {m.id} exited before it was started (exit code 2)")


def test_replies_are_byte_for_byte_what_the_python_shim_sends(monitors: MakeMonitor) -> None:
    """protocol.encode of the same reply (compact separators, ensure_ascii, the keys in Python's order)."""
    m = monitors("read code <&3; exit $code", name="caf\u00e9")
    c = m.client()
    c.request("state")
    raw = c.raw_line()
    state = json.loads(raw)
    assert raw == protocol.encode(protocol.reply_ok(
        id=m.id, state="running", pid=m.init_pid, started_at=state["started_at"], shim_pid=m.pid))
    assert "\\u00e9" in raw.decode()
    c.request("kill", signal=0 + 10, all=False)
    assert c.raw_line() == protocol.encode(protocol.reply_ok())
    c.request("wait")
    raw = c.raw_line()
    status = ExitStatus.from_json(json.loads(raw)["status"])
    assert status.signal == 10
    assert raw == protocol.encode(protocol.reply_ok(status=status.to_json()))
    c.request("state")
    assert c.raw_line() == protocol.encode(protocol.reply_ok(
        id=m.id, state="stopped", pid=m.init_pid, started_at=state["started_at"], shim_pid=m.pid,
        status=status.to_json()))
    c.request("shutdown")
    assert c.raw_line() == protocol.encode(protocol.reply_error(
        "Unavailable", f"{m.id}: delete needs crispd (its zygote at {m.zygote_path}: No such file or directory)"))


def test_fds_after_the_hand_over(monitors: MakeMonitor) -> None:
    """The state fd is closed; every other fd but stdio is close-on-exec, and the ones handed over non-blocking."""
    m = monitors("read x <&3", conns=({"mode": "idle"},))
    idle = m.client()
    m.running_monitor()
    assert idle.call("state")["ok"] is True
    fds = {int(fd): os.readlink(f"/proc/{m.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{m.pid}/fd")}
    assert not [target for target in fds.values() if "crisp-monitor-state" in target]
    for fd, target in fds.items():
        flags = int(next(line for line in open(f"/proc/{m.pid}/fdinfo/{fd}") if line.startswith("flags:"))
                    .split()[1], 8)
        if fd > 2:
            assert flags & os.O_CLOEXEC, (fd, target)
        if target.startswith(("socket:", "pipe:")):
            assert flags & os.O_NONBLOCK, (fd, target)
