"""What crisp-monitor leaves to Python: exec, update, kill --all and the executor's delete (in shutdown) go to
crispd's zygote (a stand-in here) as one line and one fd; and shutdown itself."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import stat
import struct
import termios
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.monitor.harness import Monitor, Zygote, error_of, wait_for

MakeMonitor = Callable[..., Monitor]
OK = b'{"v":1,"ok":true}\n'


def expected_request(m: Monitor, op: dict[str, Any], state: str = "running", rootfs: str = "") -> dict[str, Any]:
    started_at = m.call("state")["started_at"]
    return {"work": "shim_op", "bundle": str(m.bundle),
            "state": {"state": state, "pid": m.init_pid, "started_at": started_at, "rootfs_mounted": rootfs},
            "op": op}


def answer_kills_later(zygote: Zygote) -> Callable[[dict[str, Any], int], None]:
    """A delegate that answers a kill --all later, from another thread (the stand-in takes the next request
    meanwhile), and anything else at once; the events say in which order things happened."""
    def delegate(request: dict[str, Any], fd: int) -> None:
        if request["op"]["op"] != "kill":
            Zygote.answer_ok(request, fd)
            return

        def answer() -> None:
            zygote.events.append("answered kill")
            os.write(fd, OK)
            os.close(fd)
        threading.Timer(0.3, answer).start()
    return delegate


def test_exec_hands_the_clients_connection_to_the_delegate(monitors: MakeMonitor, zygote: Zygote) -> None:
    seen: dict[str, Any] = {}

    def delegate(request: dict[str, Any], fd: int) -> None:
        st = os.fstat(fd)
        seen.update(socket=stat.S_ISSOCK(st.st_mode), blocking=os.get_blocking(fd))
        os.write(fd, b'{"v":1,"ok":true,"exec_id":"exec1"}\n' + bytes([1, 0, 0, 0, 3]) + b"hi\n" +
                 bytes([4, 0, 0, 0, 15]) + b'{"exit_code":0}')
        os.close(fd)

    zygote.handler = delegate
    m = monitors("read x <&3", zygote=zygote.path, rootfs_mounted="/run/x/rootfs")
    client = m.client()
    request = {"v": 1, "op": "exec", "args": ["echo", "hi"], "env": ["A=b"], "tty": False, "stdin": False}
    client.send(request)
    assert client.line() == {"v": 1, "ok": True, "exec_id": "exec1"}
    assert client.frame() == (1, b"hi\n")
    assert client.frame() == (4, b'{"exit_code":0}')
    # the delegate closed the connection and the monitor kept no copy of it: the client sees the end
    assert client.at_eof()
    assert zygote.received == [expected_request(m, request, rootfs="/run/x/rootfs")]
    assert seen == {"socket": True, "blocking": True}
    assert m.call("state")["state"] == "running"


def test_a_tty_execs_terminal_is_resized_through_what_its_delegate_told(monitors: MakeMonitor,
                                                                         zygote: Zygote) -> None:
    """`resize` with an exec id: the delegate sends its monitor the session's pty master (seqpacket, SCM_RIGHTS)
    before the caller learns the exec id, and says when the session is over, before the caller hears of it."""
    master, slave = os.openpty()
    try:
        zygote.handler = lambda request, fd: os.close(fd)
        m = monitors("read x <&3", zygote=zygote.path)
        m.client().send({"v": 1, "op": "exec", "args": ["sh"], "tty": True})
        wait_for(lambda: len(zygote.ctls) == 1, "the exec's delegation")
        ctl = zygote.ctls[0]
        assert ctl.type == socket.SOCK_SEQPACKET
        assert error_of(m.call("resize", width=100, height=30, exec_id="exec7-1"))[0] == "NotFound"
        socket.send_fds(ctl, [b'{"op":"tty","exec_id":"exec7-1"}\n'], [master])
        # told before the caller could ask: no wait between the news and the resize
        assert m.call("resize", width=100, height=30, exec_id="exec7-1") == {"v": 1, "ok": True}
        assert struct.unpack("HHHH", fcntl.ioctl(slave, termios.TIOCGWINSZ, bytes(8)))[:2] == (30, 100)
        ctl.send(b'{"op":"done","exec_id":"exec7-1"}\n')
        assert error_of(m.call("resize", width=1, height=1, exec_id="exec7-1")) == (
            "NotFound", f"{m.id}: no running exec 'exec7-1'")
        # a delegate that goes takes its terminals with it
        socket.send_fds(ctl, [b'{"op":"tty","exec_id":"exec7-2"}\n'], [master])
        assert m.call("resize", width=90, height=20, exec_id="exec7-2") == {"v": 1, "ok": True}
        ctl.close()
        zygote.ctls.clear()
        wait_for(lambda: m.call("resize", width=1, height=1, exec_id="exec7-2").get("ok") is False,
                 "the terminal of a gone delegate to be forgotten")
    finally:
        os.close(master)
        os.close(slave)


def test_exec_in_a_stopped_container_is_refused_here(monitors: MakeMonitor, zygote: Zygote) -> None:
    m = monitors("true", zygote=zygote.path)
    m.call("wait")
    assert error_of(m.call("exec", args=["true"])) == ("FailedPrecondition",
                                                       f"container {m.id} is stopped, not running")
    assert zygote.received == []


def test_update_relays_the_delegates_reply(monitors: MakeMonitor, zygote: Zygote) -> None:
    replies = [b'{"v":1,"ok":true,"from":"the delegate"}\n',
               b'{"v":1,"ok":false,"error":{"kind":"InvalidArgument","message":"runc: bad \\u00e9"}}\n']

    def delegate(request: dict[str, Any], fd: int) -> None:
        os.write(fd, replies[len(zygote.received) - 1])
        os.close(fd)

    zygote.handler = delegate
    m = monitors("read x <&3", zygote=zygote.path)
    client = m.client()
    resources = {"memory": {"limit": 1 << 30}, "cpu": {"shares": 512}}
    for reply in replies:
        client.request("update", resources=resources)
        assert client.raw_line() == reply
    assert zygote.received == [expected_request(m, {"v": 1, "op": "update", "resources": resources})] * 2


def test_a_delegate_that_dies_without_an_answer(monitors: MakeMonitor, zygote: Zygote) -> None:
    zygote.handler = lambda request, fd: os.close(fd)
    m = monitors("read x <&3", zygote=zygote.path)
    assert error_of(m.call("update", resources={})) == ("Internal", "the delegate of update died")
    assert error_of(m.call("kill", signal=9, all=True)) == ("Internal", "the delegate of kill died")
    assert m.call("state")["state"] == "running"


def test_update_refused_here(monitors: MakeMonitor, zygote: Zygote) -> None:
    m = monitors("read x <&3", zygote=zygote.path)
    assert error_of(m.call("update", resources=[1])) == ("InvalidArgument",
                                                         f"{m.id}: update needs the resources as an object")
    m.trigger("go")
    m.call("wait")
    assert error_of(m.call("update", resources={})) == ("FailedPrecondition",
                                                        f"container {m.id} is stopped: nothing to update")
    assert zygote.received == []


def test_kill_all_is_delegated(monitors: MakeMonitor, zygote: Zygote) -> None:
    m = monitors("read x <&3", zygote=zygote.path)
    client = m.client()
    client.request("kill", signal=15, all=True)
    assert client.raw_line() == OK
    assert zygote.received == [expected_request(m, {"v": 1, "op": "kill", "signal": 15, "all": True})]
    # a kill --all of a stopped container goes to the executor too (it may have processes left)
    m.trigger("go")
    m.call("wait")
    assert m.call("kill", signal=9, all=True)["ok"] is True
    assert zygote.received[-1]["state"]["state"] == "stopped"


def test_zygote_unreachable(monitors: MakeMonitor, base: Path) -> None:
    m = monitors("read x <&3")
    path = m.zygote_path
    for op, fields in (("update", {"resources": {}}), ("kill", {"all": True, "signal": 9}),
                       ("exec", {"args": ["true"]})):
        assert error_of(m.call(op, **fields)) == (
            "Unavailable", f"{m.id}: {op} needs crispd (its zygote at {path}: No such file or directory)")
    assert m.call("state")["state"] == "running"


def test_a_zygote_path_longer_than_sun_path(monitors: MakeMonitor, base: Path) -> None:
    deep = base / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    stand_in = Zygote(deep / "zygote.sock")
    try:
        assert len(str(stand_in.path)) > 108
        m = monitors("read x <&3", zygote=stand_in.path)
        assert m.call("update", resources={}) == {"v": 1, "ok": True}
        assert stand_in.ops() == ["update"]
    finally:
        stand_in.stop()
    assert stand_in.errors == []


def test_shutdown_of_an_exited_container(monitors: MakeMonitor, zygote: Zygote) -> None:
    m = monitors("read x <&3", zygote=zygote.path, rootfs_mounted="/run/x/rootfs")
    m.trigger("go")
    m.call("wait")
    before = expected_request(m, {"v": 1, "op": "delete"}, state="stopped", rootfs="/run/x/rootfs")
    client = m.client()
    assert client.call("shutdown") == {"v": 1, "ok": True}
    assert m.wait_exit() == 0
    assert zygote.received == [before]
    for name in ("shim.sock", "shim.json", "init.pid"):
        assert not (m.bundle / name).exists(), name
    assert (m.bundle / "status.json").exists()
    assert f"container {m.id} deleted; shim exits" in m.shim_log()


def test_shutdown_refused_while_running(monitors: MakeMonitor, zygote: Zygote) -> None:
    m = monitors("read x <&3", zygote=zygote.path)
    assert error_of(m.call("shutdown")) == (
        "FailedPrecondition", f"container {m.id} is running: stop it first (or shut down with force)")
    assert m.call("state")["state"] == "running" and zygote.received == []


def test_shutdown_with_force_waits_for_the_kill_before_the_delete(monitors: MakeMonitor, zygote: Zygote) -> None:
    """The init is killed, the executor's kill --all goes out; the delete only once that kill answered (runc
    freezes the cgroup while it kills); two shutdowns get one answer each."""
    zygote.handler = answer_kills_later(zygote)
    m = monitors("read x <&3", zygote=zygote.path)
    first, second = m.client(), m.client()
    first.request("shutdown", force=True)
    second.request("shutdown", force=True)
    assert first.line() == {"v": 1, "ok": True}
    assert second.line() == {"v": 1, "ok": True}
    assert m.wait_exit() == 0
    assert zygote.events == ["received kill", "answered kill", "received delete"]
    assert zygote.received[0]["op"] == {"v": 1, "op": "kill", "all": True, "signal": 9}
    status = json.loads((m.bundle / "status.json").read_text())
    assert (status["signal"], status["exit_code"]) == (signal.SIGKILL, 128 + signal.SIGKILL)
    assert f"shutdown with force: killing container {m.id}" in m.shim_log()


def test_a_failed_delete_keeps_the_record_and_a_later_shutdown_tries_again(monitors: MakeMonitor,
                                                                            zygote: Zygote) -> None:
    failure = b'{"v":1,"ok":false,"error":{"kind":"FailedPrecondition","message":"c: runc delete failed"}}\n'

    def delegate(request: dict[str, Any], fd: int) -> None:
        os.write(fd, failure)
        os.close(fd)

    zygote.handler = delegate
    m = monitors("true", zygote=zygote.path)
    m.call("wait")
    client = m.client()
    client.request("shutdown")
    assert client.raw_line() == failure
    assert "c: runc delete failed; keeping the container's record for another try" in m.shim_log()
    assert m.alive()
    for name in ("shim.sock", "shim.json", "init.pid"):
        assert (m.bundle / name).exists(), name
    assert m.call("state")["state"] == "stopped"
    zygote.handler = Zygote.answer_ok
    assert client.call("shutdown") == {"v": 1, "ok": True}
    assert m.wait_exit() == 0
    assert zygote.ops() == ["delete", "delete"]


def test_a_delete_that_cannot_reach_the_zygote(monitors: MakeMonitor) -> None:
    m = monitors("true")
    m.call("wait")
    assert error_of(m.call("shutdown")) == (
        "Unavailable", f"{m.id}: delete needs crispd (its zygote at {m.zygote_path}: No such file or directory)")
    assert m.alive() and (m.bundle / "shim.sock").exists()


def test_a_delete_delegate_that_dies(monitors: MakeMonitor, zygote: Zygote) -> None:
    zygote.handler = lambda request, fd: os.close(fd)
    m = monitors("true", zygote=zygote.path)
    m.call("wait")
    assert error_of(m.call("shutdown")) == ("Internal", "the delegate of delete died")
    wait_for(lambda: "the delegate of delete died; keeping the container's record" in m.shim_log(), "the log line")
    assert m.alive()


def test_exit_does_not_wait_forever_for_a_client_that_does_not_read(monitors: MakeMonitor, zygote: Zygote) -> None:
    """An attacher that never reads holds back the exit for the flush grace only."""
    m = monitors("read x <&3; head -c 3000000 /dev/zero; read x <&3", zygote=zygote.path, log=False)
    stuck = m.client()
    assert stuck.call("attach", stdout=True)["ok"] is True
    m.trigger("go")
    m.trigger("go")
    m.call("wait")
    assert m.call("shutdown") == {"v": 1, "ok": True}
    assert m.wait_exit() == 0
    assert "dropping an attach session" not in m.shim_log()  # it was behind, not dropped: held the exit


def test_hang_point_after_the_delete(monitors: MakeMonitor, zygote: Zygote) -> None:
    """hang_points ["shim.deleted"]: deleted, but the monitor stops before its files go."""
    m = monitors("true", zygote=zygote.path, hang_points=("shim.deleted",))
    m.call("wait")
    client = m.client()
    client.request("shutdown")
    wait_for(lambda: "debug: stopped at shim.deleted until killed" in m.shim_log(), "the hang point")
    assert zygote.ops() == ["delete"]
    assert (m.bundle / "shim.sock").exists() and (m.bundle / "shim.json").exists()
    assert m.alive()


def test_a_delete_waits_for_a_clients_kill_all_in_flight(monitors: MakeMonitor, zygote: Zygote) -> None:
    zygote.handler = answer_kills_later(zygote)
    m = monitors("true", zygote=zygote.path)
    m.call("wait")
    killer, stopper = m.client(), m.client()
    killer.request("kill", signal=9, all=True)
    wait_for(lambda: zygote.events == ["received kill"], "the kill --all at the zygote")
    stopper.request("shutdown")
    assert killer.raw_line() == OK
    assert stopper.line() == {"v": 1, "ok": True}
    assert m.wait_exit() == 0
    assert zygote.events == ["received kill", "answered kill", "received delete"]
