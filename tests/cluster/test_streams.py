"""kubectl's streaming commands through the API server, the kubelet and crisp's streaming server: exec (one-shot,
with stdin, with a tty on a pty), attach, port-forward and cp both ways."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import select
import socket
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator

import pytest

from tests.cluster.onenode import Cluster
from tests.cluster.workloads import container, pod

ECHO_PORT = 9000
LOCAL_PORT = 19000  # in the node's network namespace


@pytest.fixture(scope="module")
def streams(cluster: Cluster) -> Iterator[str]:
    """One pod: a shell to exec in, an echo server (busybox nc) and a reader of its stdin that answers each line."""
    cluster.kubectl.apply(pod("streams", [
        container("shell", cluster.busybox, ["sleep", "100000"]),
        container("echo", cluster.busybox, ["nc", "-ll", "-p", str(ECHO_PORT), "-e", "cat"],
                  ports=[{"containerPort": ECHO_PORT}]),
        container("reader", cluster.busybox, ["sh", "-c", 'while read line; do echo "got $line"; done'],
                  stdin=True),
    ]))
    cluster.kubectl.run("wait", "pod/streams", "--for=condition=Ready", "--timeout=120s", timeout=150)
    yield "streams"
    cluster.kubectl.run("delete", "pod", "streams", "--wait=true", "--timeout=60s", timeout=90)


def test_exec_one_shot(cluster: Cluster, streams: str) -> None:
    done = cluster.kubectl.run("exec", streams, "--container=shell", "--", "sh", "-c",
                               "echo out; echo err >&2; exit 3", check=False)
    assert done.returncode == 3
    assert done.stdout == b"out\n"
    assert b"err\n" in done.stderr


def test_exec_with_stdin(cluster: Cluster, streams: str) -> None:
    data = os.urandom(1 << 20)
    done = cluster.kubectl.run("exec", "--stdin", streams, "--container=shell", "--", "sha256sum", input=data)
    assert done.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    data, deadline = b"", time.monotonic() + timeout
    while marker not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} within {timeout}s: {data[-1000:]!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side of the pty is closed
                chunk = b""
            assert chunk, f"the stream ended before {marker!r}: {data[-1000:]!r}"
            data += chunk
    return data


def test_exec_with_a_tty(cluster: Cluster, streams: str) -> None:
    """`kubectl exec -it` from a pty: the shell in the container has a terminal of the pty's size."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    proc = cluster.kubectl.popen("exec", "--stdin", "--tty", streams, "--container=shell", "--", "sh",
                                 stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        os.write(master, b"tty; stty size; [ -t 0 ] && echo interactive-$((6 * 7))\r")
        output = _read_until(master, b"interactive-42", 30)
        os.write(master, b"exit 0\r")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = output.decode(errors="replace")
    assert "/dev/pts/" in text and "not a tty" not in text, text
    assert "33 111" in text, text


def test_attach(cluster: Cluster, streams: str) -> None:
    proc = cluster.kubectl.popen("attach", "--stdin", streams, "--container=reader", stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        deadline = time.monotonic() + 30
        output = b""
        while b"got hello" not in output:  # attach may hear the line only once its streams are up
            assert time.monotonic() < deadline, output
            proc.stdin.write(b"hello\n")
            proc.stdin.flush()
            if select.select([proc.stdout], [], [], 1)[0]:
                output += os.read(proc.stdout.fileno(), 4096)
    finally:
        proc.kill()
        proc.wait()


def test_port_forward_round_trips_bytes(cluster: Cluster, streams: str) -> None:
    proc = cluster.kubectl.popen("port-forward", f"pod/{streams}", f"{LOCAL_PORT}:{ECHO_PORT}",
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        _read_until(proc.stdout.fileno(), f"Forwarding from 127.0.0.1:{LOCAL_PORT}".encode(), 30)
        data = os.urandom(256 << 10)
        with cluster.node.network():  # kubectl listens on the node's loopback
            conn = socket.create_connection(("127.0.0.1", LOCAL_PORT), timeout=30)
        with conn:
            sender = threading.Thread(target=conn.sendall, args=(data,))
            sender.start()
            received = b""
            while len(received) < len(data):
                chunk = conn.recv(65536)
                assert chunk, f"the forwarded stream ended after {len(received)} bytes"
                received += chunk
            sender.join()
        assert received == data
    finally:
        proc.kill()
        proc.wait()


def test_cp_both_ways(cluster: Cluster, streams: str) -> None:
    """kubectl cp runs tar in the container; the local side is the tier's dir, which the node sees too."""
    data = os.urandom(300 << 10)
    local_in, local_out = cluster.base / "cp-in.bin", cluster.base / "cp-out.bin"
    local_in.write_bytes(data)
    cluster.kubectl.run("cp", str(local_in), f"{streams}:/tmp/copied.bin", "--container=shell")
    remote = cluster.kubectl.text("exec", streams, "--container=shell", "--", "sha256sum", "/tmp/copied.bin")
    assert remote.split()[0] == hashlib.sha256(data).hexdigest()
    cluster.kubectl.run("exec", streams, "--container=shell", "--", "sh", "-c",
                        "echo from the pod > /tmp/back.txt; cat /tmp/copied.bin >> /tmp/back.txt")
    cluster.kubectl.run("cp", f"{streams}:/tmp/back.txt", str(local_out), "--container=shell")
    assert local_out.read_bytes() == b"from the pod\n" + data
