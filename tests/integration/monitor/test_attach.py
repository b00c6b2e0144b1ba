"""Attach sessions served by crisp-monitor: output frames per stream, stdin (stdin_once), the exit frame, a
slow attacher dropped, terminals and window sizes; and the connections the Python shim hands over."""

from __future__ import annotations

import fcntl
import json
import struct
import termios
import threading
from collections.abc import Callable

from tests.integration.monitor.harness import Client, Monitor, error_of, wait_for

MakeMonitor = Callable[..., Monitor]
STDIN, STDOUT, STDERR, RESIZE, EXIT = 0, 1, 2, 3, 4


def attach(m: Monitor, **fields: object) -> Client:
    client = m.client()
    reply = client.call("attach", **fields)
    assert reply == {"v": 1, "ok": True, "tty": m.tty}, reply
    return client


def frames_until_exit(client: Client) -> tuple[dict[int, bytes], dict[str, object] | None]:
    """Output per stream until the exit frame (then the monitor must close the connection) or EOF."""
    out: dict[int, bytes] = {}
    while (frame := client.frame()) is not None:
        stream, payload = frame
        if stream == EXIT:
            assert client.at_eof(), "the connection stays open after the exit frame"
            return out, json.loads(payload)
        out[stream] = out.get(stream, b"") + payload
    return out, None


def test_attach_with_stdin_and_stdout_and_the_exit_frame(monitors: MakeMonitor) -> None:
    m = monitors("cat; echo bye >&2", stdin=True, stdin_once=True)
    client = attach(m, stdin=True, stdout=True, stderr=True)
    client.send_frame(STDIN, b"ping\n")
    assert client.frame() == (STDOUT, b"ping\n")
    client.send_frame(STDIN, b"")  # stdin_once: the container's stdin closes with this session's
    out, exit_status = frames_until_exit(client)
    assert out == {STDERR: b"bye\n"}
    status = m.call("wait")["status"]
    assert exit_status == status and status["exit_code"] == 0
    # the exit frame is json.dumps of the status, as the Python shim sends it
    assert m.log_text().count("stdout F ping") == 1


def test_the_exit_frame_is_formatted_as_python_formats_it(monitors: MakeMonitor) -> None:
    m = monitors("read code <&3; exit $code")
    client = attach(m)
    m.trigger("go", b"3\n")
    frame = client.frame()
    assert frame is not None and frame[0] == EXIT
    assert frame[1] == json.dumps(m.call("wait")["status"]).encode()


def test_stdin_stays_open_without_stdin_once(monitors: MakeMonitor) -> None:
    m = monitors("cat", stdin=True, stdin_once=False)
    first = attach(m, stdin=True, stdout=False, stderr=False)
    watcher = attach(m, stdout=True, stderr=False)
    first.send_frame(STDIN, b"one\n")
    first.send_frame(STDIN, b"")
    first.close()
    assert watcher.frame() == (STDOUT, b"one\n")
    second = attach(m, stdin=True, stdout=False)
    second.send_frame(STDIN, b"two\n")
    assert watcher.frame() == (STDOUT, b"two\n")
    assert m.call("state")["state"] == "running"


def test_stdin_once_closes_when_the_session_disconnects(monitors: MakeMonitor) -> None:
    m = monitors("cat; echo eof", stdin=True, stdin_once=True)
    watcher = attach(m, stdout=True)
    writer = attach(m, stdin=True, stdout=False, stderr=False)
    writer.send_frame(STDIN, b"data\n")
    assert watcher.frame() == (STDOUT, b"data\n")
    writer.close()  # without an empty frame: the session's end is enough
    out, status = frames_until_exit(watcher)
    assert out == {STDOUT: b"eof\n"} and status is not None and status["exit_code"] == 0


def test_each_attacher_gets_the_streams_it_asked_for(monitors: MakeMonitor) -> None:
    m = monitors("read x <&3; echo out; echo err >&2; read x <&3")
    only_out = attach(m, stdout=True, stderr=False)
    only_err = attach(m, stdout=False, stderr=True)
    both = attach(m)
    m.trigger("go")
    m.trigger("go")
    assert frames_until_exit(only_out)[0] == {STDOUT: b"out\n"}
    assert frames_until_exit(only_err)[0] == {STDERR: b"err\n"}
    out, status = frames_until_exit(both)
    assert out == {STDOUT: b"out\n", STDERR: b"err\n"} and status is not None


def test_attach_refused(monitors: MakeMonitor) -> None:
    m = monitors("read x <&3")
    assert error_of(m.call("attach", stdin=True)) == ("FailedPrecondition",
                                                      f"container {m.id} has no stdin to attach to")
    m.trigger("go")
    m.call("wait")
    assert error_of(m.call("attach")) == ("FailedPrecondition", f"container {m.id} is stopped: cannot attach")


def test_a_slow_attacher_is_dropped(monitors: MakeMonitor) -> None:
    """An attacher that does not read is closed once it is more than 4 MiB behind; the container is not slowed
    (it writes everything and exits) and other clients are served meanwhile."""
    m = monitors("read x <&3; head -c 30000000 /dev/zero; read x <&3", log=False)
    slow = attach(m, stdout=True)
    m.trigger("go")
    wait_for(lambda: "dropping an attach session that fell" in m.shim_log(), "the slow attacher dropped")
    assert m.call("state")["state"] == "running"
    # what it had buffered, then the end (inside a frame, maybe: a dropped session is cut where it is)
    received = len(slow.buf)
    while data := slow.sock.recv(1 << 20):
        received += len(data)
    assert 0 < received < 30000000
    m.trigger("go")
    assert m.call("wait")["status"]["exit_code"] == 0


def test_tty_resize_by_request_and_by_frame(monitors: MakeMonitor) -> None:
    m = monitors("read x <&3; stty size; read x <&3; stty size; read x <&3", tty=True)
    assert m.call("resize", width=100, height=40) == {"v": 1, "ok": True}
    m.trigger("go")
    wait_for(lambda: "stdout F 40 100" in m.log_text(), "the new size seen in the container")
    client = attach(m, stdout=True)
    client.send_frame(RESIZE, json.dumps({"width": 120, "height": 50}).encode())
    client.send_frame(RESIZE, b"not json")  # logged and ignored
    m.trigger("go")
    output = b""
    while b"50 120" not in output:
        frame = client.frame()
        assert frame is not None and frame[0] == STDOUT
        output += frame[1]
    assert "ignoring a bad resize request" in m.shim_log()
    assert error_of(m.call("resize", width=80, height=24, exec_id="e1")) == (
        "NotFound", f"{m.id}: no running exec 'e1'")
    assert error_of(m.call("resize", width=-1, height=24)) == ("InvalidArgument", "bad window size -1x24")
    assert error_of(m.call("resize", width="80", height=24)) == ("InvalidArgument", "bad window size '80'x24")
    m.trigger("go")
    assert frames_until_exit(client)[1] is not None


def test_resize_without_a_terminal(monitors: MakeMonitor) -> None:
    m = monitors("read x <&3")
    assert error_of(m.call("resize", width=80, height=24)) == ("FailedPrecondition",
                                                               f"{m.id}: container has no terminal")


def test_tty_stdin(monitors: MakeMonitor) -> None:
    m = monitors("read line; echo \"got $line\"", tty=True, stdin=True)
    client = attach(m, stdin=True, stdout=True)
    client.send_frame(STDIN, b"hi\n")
    out, status = frames_until_exit(client)
    assert b"got hi" in out[STDOUT] and status is not None and status["exit_code"] == 0


def test_connections_handed_over(monitors: MakeMonitor) -> None:
    """The Python shim's open connections: an idle one, one waiting for the exit, an attach session."""
    handed = ({"mode": "idle"}, {"mode": "wait"}, {"mode": "attach", "stdin": False, "streams": [1]})
    m = monitors("read x <&3; echo after; echo hidden >&2; read code <&3; exit $code", conns=handed)
    idle = m.client()
    waiting = m.client()
    waiting.request("wait")
    attached = m.client()
    assert attached.call("attach", stdout=True, stderr=False) == {"v": 1, "ok": True, "tty": False}
    m.running_monitor()
    assert idle.call("state")["shim_pid"] == m.pid
    m.trigger("go")
    assert attached.frame() == (STDOUT, b"after\n")
    m.trigger("go", b"4\n")
    assert waiting.line()["status"]["exit_code"] == 4
    out, status = frames_until_exit(attached)
    assert out == {} and status is not None and status["exit_code"] == 4
    assert idle.call("wait")["status"]["exit_code"] == 4


def test_handed_over_waiter_of_an_exited_container(monitors: MakeMonitor) -> None:
    """The init exited while the Python shim was handing over: the waiter is answered by the monitor."""
    m = monitors("read code <&3; exit $code", conns=({"mode": "wait"},))
    m.trigger("go", b"9\n")
    waiting = m.client()
    waiting.request("wait")
    assert waiting.line()["status"]["exit_code"] == 9


def test_stdin_backpressure_pauses_the_writers(monitors: MakeMonitor) -> None:
    """A container that does not read its stdin: the monitor stops reading the attacher (its buffer stays small)
    instead of holding everything the attacher sends; once the container reads, all of it arrives."""
    m = monitors("read x <&3; cat", stdin=True, stdin_once=True)
    writer = attach(m, stdin=True, stdout=False, stderr=False)
    total = 24 << 20
    sent = [0]

    def send() -> None:
        piece = b"s" * (64 << 10)
        while sent[0] < total:
            writer.send_frame(STDIN, piece)
            sent[0] += len(piece)
        writer.send_frame(STDIN, b"")  # stdin_once: then the container's stdin closes

    sender = threading.Thread(target=send, daemon=True)
    sender.start()

    def stalled() -> bool:  # the sender is blocked: what it sent stops growing
        before = sent[0]
        sender.join(0.5)
        return sent[0] == before and sender.is_alive()
    wait_for(stalled, "the attacher's stdin to back up")
    assert sent[0] < total
    rss_kib = m.memory_kib()["rss"]
    assert rss_kib < 8 * 1024, f"the monitor holds {rss_kib} KiB: it kept reading stdin it could not deliver"
    m.trigger("go")
    assert m.call("wait")["status"]["exit_code"] == 0
    sender.join(30)
    assert sent[0] == total
    # everything went through cat into the log (P parts: there is no newline)
    assert m.log_path is not None
    with open(m.log_path, "rb") as log:
        written = sum(len(line.split(b" ", 3)[3]) - 1 for line in log)  # the content, without its newline
    assert written == total


def test_handed_over_attach_with_stdin(monitors: MakeMonitor) -> None:
    m = monitors("cat; echo done", stdin=True, stdin_once=True,
                 conns=({"mode": "attach", "stdin": True, "streams": [1, 2]},))
    client = m.client()
    assert client.call("attach", stdin=True) == {"v": 1, "ok": True, "tty": False}
    m.running_monitor()
    client.send_frame(STDIN, b"through the monitor\n")
    assert client.frame() == (STDOUT, b"through the monitor\n")
    client.send_frame(STDIN, b"")
    out, status = frames_until_exit(client)
    assert out == {STDOUT: b"done\n"} and status is not None and status["exit_code"] == 0


def test_stdin_the_container_closed_takes_nothing_more(monitors: MakeMonitor) -> None:
    """The container closed its stdin (writes fail with EPIPE): what an attacher sends afterwards is dropped, not
    kept in the monitor."""
    m = monitors("exec 0<&-; read x <&3", stdin=True)
    writer = attach(m, stdin=True, stdout=False, stderr=False)
    for _ in range(160):  # 10 MiB
        writer.send_frame(STDIN, b"s" * (64 << 10))

    def unread() -> int:  # bytes the monitor has not read from this connection yet (SIOCOUTQ)
        return struct.unpack("i", fcntl.ioctl(writer.sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    wait_for(lambda: unread() == 0, "the monitor to read everything")
    rss_kib = m.memory_kib()["rss"]
    assert rss_kib < 8 * 1024, f"the monitor holds {rss_kib} KiB of stdin nobody can read"
    assert m.call("state")["state"] == "running"
