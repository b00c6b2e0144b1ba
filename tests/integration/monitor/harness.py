"""The real crisp-monitor, started as the Python shim will start it, and what the tests talk to it with.

`Monitor` runs launcher.py (process P: the shim's set-up, the container's "init" as `/bin/sh -c`, the
hand-over) which execs shim/monitor/crisp-monitor; `Client` speaks the control protocol over shim.sock (JSON
lines, then frames); `Zygote` stands in for crispd's zygote: it takes the monitor's delegated ops (a line and an
fd over SCM_RIGHTS) and answers on the fd as a delegate would. Everything lives in one short temporary dir per
test (unix socket paths stay below sun_path's 108 bytes) and is removed, processes first, also on failure.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bench.procmem import smaps_rollup

REPO = Path(__file__).resolve().parents[3]
MONITOR = REPO / "shim" / "monitor" / "crisp-monitor"
BUILD = REPO / "scripts" / "build-monitor"
LAUNCHER = Path(__file__).with_name("launcher.py")
FRAME = struct.Struct(">BI")
TIMEOUT = 30.0  # how long a test waits for something that must happen (never asserted as a duration)


def build() -> None:
    subprocess.run([str(BUILD)], check=True)


def wait_for(check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Client:
    """One connection to the control socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(str(path))
        self.buf = bytearray()

    def send(self, message: dict[str, Any] | bytes) -> None:
        data = message if isinstance(message, bytes) else (json.dumps(message) + "\n").encode()
        self.sock.sendall(data)

    def request(self, op: str, **fields: Any) -> None:
        self.send({"v": 1, "op": op, **fields})

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 16)
        if not data:
            return False
        self.buf += data
        return True

    def line(self) -> dict[str, Any]:
        return dict(json.loads(self.raw_line()))

    def raw_line(self) -> bytes:
        while b"\n" not in self.buf:
            if not self._fill():
                raise EOFError("the monitor closed the connection")
        end = self.buf.index(b"\n") + 1
        line = bytes(self.buf[:end])
        del self.buf[:end]
        return line

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        self.request(op, **fields)
        return self.line()

    def frame(self) -> tuple[int, bytes] | None:
        """The next frame; None at EOF."""
        while len(self.buf) < FRAME.size:
            if not self._fill():
                assert not self.buf, f"EOF inside a frame header: {self.buf!r}"
                return None
        stream, length = FRAME.unpack_from(self.buf)
        while len(self.buf) < FRAME.size + length:
            if not self._fill():
                raise AssertionError("EOF inside a frame")
        payload = bytes(self.buf[FRAME.size:FRAME.size + length])
        del self.buf[:FRAME.size + length]
        return stream, payload

    def send_frame(self, stream: int, payload: bytes) -> None:
        self.sock.sendall(FRAME.pack(stream, len(payload)) + payload)

    def at_eof(self) -> bool:
        """Whether the monitor closed this connection (after everything it sent has been read)."""
        try:
            return not self._fill()
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def error_of(reply: dict[str, Any]) -> tuple[str, str]:
    assert reply["ok"] is False, reply
    return reply["error"]["kind"], reply["error"]["message"]


class Zygote:
    """crispd's zygote as the monitor sees it: a unix socket that takes one line and one fd per connection (two for an
    exec: the second is the delegate's news channel to the monitor, kept in `ctls` for the test).

    `handler(request, fd)` runs on the stand-in's thread for each delegated op and answers on fd as the
    delegate would (None: the default, which answers ok); every request is recorded in `received`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.received: list[dict[str, Any]] = []
        self.ctls: list[socket.socket] = []
        self.events: list[str] = []
        self.handler: Callable[[dict[str, Any], int], None] = self.answer_ok
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if len(str(path).encode()) < 108:
            self.sock.bind(str(path))
        else:  # longer than sun_path: through an O_PATH fd of its dir
            dir_fd = os.open(path.parent, os.O_PATH)
            try:
                self.sock.bind(f"/proc/self/fd/{dir_fd}/{path.name}")
            finally:
                os.close(dir_fd)
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.stopping = False
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @staticmethod
    def answer_ok(request: dict[str, Any], fd: int) -> None:
        os.write(fd, b'{"v":1,"ok":true}\n')
        os.close(fd)

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            fd = -1
            try:
                with conn:
                    conn.settimeout(TIMEOUT)
                    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 4)
                    while data and not data.endswith(b"\n"):
                        more = conn.recv(1 << 16)
                        if not more:
                            break
                        data += more
                    # the zygote never answers on this connection; the monitor closes it
                    assert conn.recv(1) == b"", "the monitor sent more than one line"
                request = json.loads(data)
                wanted = 2 if request["op"].get("op") == "exec" else 1
                assert len(fds) == wanted, f"expected {wanted} fds, got {fds}"
                fd = fds[0]
                if wanted == 2:
                    self.ctls.append(socket.socket(fileno=fds[1]))
                self.received.append(request)
                self.events.append(f"received {request['op'].get('op')}")
                self.handler(request, fd)
            except BaseException as exc:  # reported by the test at the end
                self.errors.append(exc)
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass

    def ops(self) -> list[str]:
        return [r["op"].get("op") for r in self.received]

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.sock.close()
        for ctl in self.ctls:
            ctl.close()


class Monitor:
    """A container's init watched by crisp-monitor, set up by launcher.py in `base/<name>`."""

    def __init__(self, base: Path, script: str, *, name: str = "b", stdin: bool = False, stdin_once: bool = False,
                 tty: bool = False, log: bool = True, log_max_line: int = 16 * 1024,
                 hang_points: tuple[str, ...] = (), zygote: Path | None = None,
                 conns: tuple[dict[str, Any], ...] = (), oom: dict[str, Any] | None = None,
                 rootfs_mounted: str = "", override: dict[str, Any] | None = None,
                 fifos: tuple[str, ...] = ("go",), log_path: str | None = None) -> None:
        self.base = base
        self.bundle = base / name
        self.bundle.mkdir()
        for fifo in fifos:  # made before the init starts: it waits on them
            os.mkfifo(self.bundle / fifo)
        self.id = f"c-{name}"
        self.sock_path = self.bundle / "shim.sock"
        self.log_path = Path(log_path) if log_path else base / f"{name}.log" if log else None
        self.zygote_path = zygote if zygote is not None else base / "no-zygote.sock"
        self.tty = tty
        if "go" in fifos:
            # the init holds the fifo open read-write on fd 3: every trigger's line waits there for its `read x <&3`
            script = f"exec 3<>go; {script}"
        self.spec = {"bundle": str(self.bundle), "id": self.id, "script": script, "tty": tty, "stdin": stdin,
                     "stdin_once": stdin_once, "log_path": str(self.log_path) if self.log_path else "",
                     "log_max_line": log_max_line, "hang_points": list(hang_points),
                     "zygote_socket": str(self.zygote_path), "conns": list(conns), "oom": oom,
                     "rootfs_mounted": rootfs_mounted, "monitor": str(MONITOR), "override": override}
        self.proc: subprocess.Popen[bytes] | None = None
        self.clients: list[Client] = []
        self.init_pid = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Monitor:
        self.proc = subprocess.Popen([sys.executable, str(LAUNCHER), json.dumps(self.spec)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        pid_file = self.bundle / "init.pid"
        self.init_pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), "the init's pid"))
        wait_for(self.sock_path.exists, "shim.sock")
        return self

    def running_monitor(self) -> None:
        """Wait until P has exec'd the monitor."""
        def execed() -> bool:
            try:
                return os.readlink(f"/proc/{self.pid}/exe") == str(MONITOR)
            except OSError:
                return False
        wait_for(execed, "the exec of crisp-monitor")

    def client(self) -> Client:
        client = Client(self.sock_path)
        self.clients.append(client)
        return client

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        client = self.client()
        try:
            return client.call(op, **fields)
        finally:
            client.close()

    def trigger(self, name: str, data: bytes = b"go\n") -> None:
        """Write to the fifo `name` in the bundle that the init waits on (`go`: `read x <&3`)."""
        path = self.bundle / name

        def opened() -> int:
            try:
                return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # the init is not reading it yet
                    return 0
                raise
        fd = wait_for(opened, f"the init to read {name}")
        try:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    time.sleep(0.01)
        finally:
            os.close(fd)

    def shim_log(self) -> str:
        return (self.bundle / "shim.log").read_text()

    def log_text(self) -> str:
        assert self.log_path is not None
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_exit(self) -> int:
        """The monitor's own exit code, once it has exited."""
        assert self.proc is not None
        return self.proc.wait(TIMEOUT)

    def alive(self) -> bool:
        assert self.proc is not None
        return self.proc.poll() is None

    def memory_kib(self) -> dict[str, int]:
        """The monitor's rss, pss and uss (smaps_rollup)."""
        return smaps_rollup(self.pid)

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        if self.proc is None or self.proc.returncode is not None:
            return  # never started, or reaped by the test: its init was gone before it exited
        # not reaped yet, so the pids are still ours: the init (its own session with a tty) while it is still
        # the monitor's child, then P's process group (the monitor, the init, whatever the init started)
        if self.init_pid and parent_of(self.init_pid) == self.proc.pid:
            for kill in (os.killpg, os.kill):
                try:
                    kill(self.init_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(TIMEOUT)


def parent_of(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rpartition(")")[2].split()[1])
