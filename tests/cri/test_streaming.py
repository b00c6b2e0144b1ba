"""Exec, Attach and PortForward end to end: a real crispd with real containers, driven by a SPDY client written
from the protocol (tests/cri/spdy_client.py), and by crictl (the pinned one: make tools)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri import api as cri
from tests import tools
from tests.cri.conftest import TestImages
from tests.cri.pods import Pods
from tests.cri.spdy_client import (
    SpdyClient,
    UpgradeRefused,
    exit_code,
    finish,
    open_remote_command,
    send_resize,
)
from tests.cri.test_containers import Kubelet
from tests.leaks import wait_until

pytestmark = pytest.mark.root

REMOTE_COMMAND_PROTOCOLS = ["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"]


@pytest.fixture
def kube(pods: Pods, test_images: TestImages, tmp_path: Path) -> Kubelet:
    return Kubelet(pods, test_images, tmp_path / "logs")


def exec_url(kube: Kubelet, container_id: str, cmd: list[str], **kwargs: bool) -> str:
    return str(kube.rt.Exec(cri.ExecRequest(container_id=container_id, cmd=cmd, **kwargs)).url)


def attach_url(kube: Kubelet, container_id: str, **kwargs: bool) -> str:
    return str(kube.rt.Attach(cri.AttachRequest(container_id=container_id, **kwargs)).url)


def port_forward_url(kube: Kubelet, pod_id: str, ports: tuple[int, ...] = ()) -> str:
    return str(kube.rt.PortForward(cri.PortForwardRequest(pod_sandbox_id=pod_id, port=list(ports))).url)


def sleeper(kube: Kubelet, **kwargs: object) -> str:
    pod_id, pod = kube.pod()
    return kube.run(pod_id, pod, "app", ["sleep", "100000"], **kwargs)


def processes(kube: Kubelet, container_id: str) -> str:
    return kube.exec(container_id, ["busybox", "ps", "-o", "args"]).stdout.decode()


# --- exec ------------------------------------------------------------------------------------------------------


def test_exec_stdio_and_exit_codes(kube: Kubelet) -> None:
    container_id = sleeper(kube)
    url = exec_url(kube, container_id, ["sh", "-c", "cat; echo oops >&2; exit 7"], stdin=True, stdout=True,
                   stderr=True)
    assert url.startswith("http://127.0.0.1:") and "/exec/" in url
    client, streams = open_remote_command(url, stdin=True, stdout=True, stderr=True, tty=False)
    assert client.protocol == "v4.channel.k8s.io"
    payload = os.urandom(300_000)
    streams["stdin"].write(payload)
    streams["stdin"].close()  # the process reads EOF
    result = finish(client, streams)
    assert result.stdout == payload and result.stderr == b"oops\n"
    assert exit_code(result.status) == 7
    assert result.status["status"] == "Failure" and "exit code 7" in result.status["message"]

    url = exec_url(kube, container_id, ["echo", "hello"], stdout=True, stderr=True)
    client, streams = open_remote_command(url, stdin=False, stdout=True, stderr=True, tty=False)
    result = finish(client, streams)
    assert (result.stdout, result.stderr, result.status) == (b"hello\n", b"", {"metadata": {}, "status": "Success"})


@pytest.mark.parametrize("protocol", REMOTE_COMMAND_PROTOCOLS[1:])
def test_exec_older_protocols(kube: Kubelet, protocol: str) -> None:
    container_id = sleeper(kube)
    url = exec_url(kube, container_id, ["sh", "-c", "echo out; exit 3"], stdout=True)
    client, streams = open_remote_command(url, stdin=False, stdout=True, stderr=False, tty=False,
                                          protocols=(protocol,))
    assert client.protocol == protocol
    result = finish(client, streams)
    assert result.stdout == b"out\n"
    assert result.status["status"] == "Failure" and "exit code 3" in result.status["message"]
    url = exec_url(kube, container_id, ["true"], stdout=True)
    client, streams = open_remote_command(url, stdin=False, stdout=True, stderr=False, tty=False,
                                          protocols=(protocol,))
    assert finish(client, streams).status == {"status": "Success"}  # v1-v3 say nothing on success


@pytest.mark.parametrize("handler", ["", "runc"], ids=["builtin", "runc"])
def test_exec_tty_with_resize(kube: Kubelet, handler: str) -> None:
    kube.pods.handler = handler
    container_id = sleeper(kube)
    url = exec_url(kube, container_id, ["sh", "-c", "stty size; while read line; do stty size; done; echo done"],
                   stdin=True, stdout=True, tty=True)
    client, streams = open_remote_command(url, stdin=True, stdout=True, stderr=False, tty=True)
    assert set(streams) == {"error", "stdin", "stdout", "resize"}
    send_resize(streams, 100, 30)  # kubectl sends the terminal's size first thing: the process starts with it
    assert b"30 100\r\n" in streams["stdout"].read_until(b"\r\n")
    seen = bytearray()

    def resized() -> bool:
        send_resize(streams, 120, 40)
        streams["stdin"].write(b"again\n")
        seen.extend(streams["stdout"].read_until(b"\n"))
        return b"40 120" in seen

    assert wait_until(resized, 30)
    streams["stdin"].close()  # EOF on a terminal: ^D, `read` fails, the loop ends
    result = finish(client, streams)
    assert b"done\r\n" in result.stdout and result.status["status"] == "Success"


def test_exec_bad_requests(kube: Kubelet) -> None:
    container_id = sleeper(kube)
    bad = [
        (cri.ExecRequest(container_id=container_id, cmd=["true"], tty=True, stdout=True, stderr=True),
         grpc.StatusCode.INVALID_ARGUMENT),
        (cri.ExecRequest(container_id=container_id, cmd=["true"]), grpc.StatusCode.INVALID_ARGUMENT),
        (cri.ExecRequest(container_id=container_id, stdout=True), grpc.StatusCode.INVALID_ARGUMENT),
        (cri.ExecRequest(container_id="nosuchcontainer", cmd=["true"], stdout=True), grpc.StatusCode.NOT_FOUND),
    ]
    for request, code in bad:
        with pytest.raises(grpc.RpcError) as err:
            kube.rt.Exec(request)
        assert err.value.code() is code, request
    with pytest.raises(grpc.RpcError) as err:
        kube.rt.Attach(cri.AttachRequest(container_id=container_id, stdin=True, stdout=True))
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # created without stdin
    # a command that cannot be run: the session reports an error instead of success
    url = exec_url(kube, container_id, ["/no/such/program"], stdout=True, stderr=True)
    client, streams = open_remote_command(url, stdin=False, stdout=True, stderr=True, tty=False)
    assert finish(client, streams).status["status"] == "Failure"
    kube.rt.StopContainer(cri.StopContainerRequest(container_id=container_id, timeout=0))
    with pytest.raises(grpc.RpcError) as err:
        exec_url(kube, container_id, ["true"], stdout=True)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_exec_slow_reader_loses_nothing(kube: Kubelet) -> None:
    container_id = sleeper(kube)
    size = 24 * 1024 * 1024  # far more than every buffer on the way (pipes, shim backlog, sockets)
    made = kube.exec(container_id, ["sh", "-c", f"head -c {size} /dev/urandom > /tmp/big && sha256sum /tmp/big"],
                     timeout=60)
    expected = made.stdout.split()[0].decode()
    url = exec_url(kube, container_id, ["cat", "/tmp/big"], stdout=True)
    client, streams = open_remote_command(url, stdin=False, stdout=True, stderr=False, tty=False)
    client.pause_reading()
    time.sleep(3)  # the reader stalls: crispd and the shim must hold back, not drop or hoard
    client.resume_reading()
    result = finish(client, streams, timeout=120)
    assert len(result.stdout) == size and hashlib.sha256(result.stdout).hexdigest() == expected
    assert result.status["status"] == "Success"


@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "tty"])
def test_client_disconnect_ends_the_exec(kube: Kubelet, tty: bool) -> None:
    container_id = sleeper(kube)
    url = exec_url(kube, container_id, ["sh", "-c", "echo started; exec sleep 12345"], stdout=True, stdin=tty,
                   tty=tty)
    client, streams = open_remote_command(url, stdin=tty, stdout=True, stderr=False, tty=tty)
    streams["stdout"].read_until(b"started")
    assert "sleep 12345" in processes(kube, container_id)
    client.abort()  # gone mid-stream, without a goodbye
    assert wait_until(lambda: "sleep 12345" not in processes(kube, container_id), 20)
    assert "sleep 100000" in processes(kube, container_id)
    # the server goes on serving
    url = exec_url(kube, container_id, ["echo", "still"], stdout=True)
    client, streams = open_remote_command(url, stdin=False, stdout=True, stderr=False, tty=False)
    assert finish(client, streams).stdout == b"still\n"


# --- attach ----------------------------------------------------------------------------------------------------


def test_attach_without_tty(kube: Kubelet) -> None:
    pod_id, pod = kube.pod()
    script = "while read line; do echo got:$line; echo err:$line >&2; done; echo bye"
    container_id = kube.run(pod_id, pod, "reader", ["sh", "-c", script], stdin=True, stdin_once=True)
    url = attach_url(kube, container_id, stdin=True, stdout=True, stderr=True)
    assert "/attach/" in url
    client, streams = open_remote_command(url, stdin=True, stdout=True, stderr=True, tty=False)
    streams["stdin"].write(b"one\ntwo\n")
    streams["stdout"].read_until(b"got:two\n")
    streams["stderr"].read_until(b"err:two\n")
    streams["stdin"].close()  # stdin_once: the container's stdin closes with the session's
    result = finish(client, streams)
    assert result.stdout.endswith(b"bye\n") and result.status["status"] == "Success"
    assert kube.wait_exited(container_id).exit_code == 0


def test_attach_with_tty_and_resize(kube: Kubelet) -> None:
    pod_id, pod = kube.pod()
    container_id = kube.run(pod_id, pod, "shell", ["sh"], stdin=True, tty=True)
    with pytest.raises(grpc.RpcError) as err:  # a terminal's container is attached with a terminal
        kube.rt.Attach(cri.AttachRequest(container_id=container_id, stdin=True, stdout=True, tty=False))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    url = attach_url(kube, container_id, stdin=True, stdout=True, tty=True)
    client, streams = open_remote_command(url, stdin=True, stdout=True, stderr=False, tty=True)
    seen = bytearray()

    def resized() -> bool:
        send_resize(streams, 90, 20)
        streams["stdin"].write(b"stty size\n")
        seen.extend(streams["stdout"].read_until(b"\n"))
        return b"20 90" in seen

    assert wait_until(resized, 30)
    streams["stdin"].write(b"exit 0\n")
    result = finish(client, streams)
    assert result.status["status"] == "Success"
    assert kube.wait_exited(container_id).exit_code == 0


# --- tokens and the HTTP side ----------------------------------------------------------------------------------


def test_tokens_are_single_use_and_protocols_negotiated(kube: Kubelet) -> None:
    container_id = sleeper(kube)
    url = exec_url(kube, container_id, ["true"], stdout=True)
    client, streams = open_remote_command(url, stdin=False, stdout=True, stderr=False, tty=False)
    assert client.ping(7) == 7  # a PING is echoed
    client.settings_and_window_update()  # accepted and ignored
    assert finish(client, streams).status["status"] == "Success"
    with pytest.raises(UpgradeRefused) as refused:
        SpdyClient(url)
    assert refused.value.status == 404

    url = exec_url(kube, container_id, ["true"], stdout=True)
    with pytest.raises(UpgradeRefused) as refused:
        SpdyClient(url, protocols=("v9.channel.k8s.io",))
    assert refused.value.status == 403
    assert refused.value.header_values("X-Accepted-Stream-Protocol-Versions") == REMOTE_COMMAND_PROTOCOLS
    with pytest.raises(UpgradeRefused) as refused:  # the refusal used the token up
        SpdyClient(url)
    assert refused.value.status == 404

    with pytest.raises(UpgradeRefused) as refused:  # the client's preference wins
        client = SpdyClient(exec_url(kube, container_id, ["true"], stdout=True), protocols=())
    assert refused.value.status == 400
    url = exec_url(kube, container_id, ["true"], stdout=True)
    client = SpdyClient(url, protocols=("v2.channel.k8s.io", "v4.channel.k8s.io"))
    assert client.protocol == "v2.channel.k8s.io"
    client.close()
    url = exec_url(kube, container_id, ["true"], stdout=True)
    with pytest.raises(UpgradeRefused) as refused:
        SpdyClient(url.replace("/exec/", "/attach/"))  # a token only opens what it was made for
    assert refused.value.status == 404
    with pytest.raises(UpgradeRefused) as refused:
        SpdyClient(exec_url(kube, container_id, ["true"], stdout=True), upgrade=False)
    assert refused.value.status == 400
    with pytest.raises(UpgradeRefused) as refused:
        SpdyClient(url.rsplit("/", 2)[0] + "/metrics")
    assert refused.value.status == 404


@contextlib.contextmanager
def running_pods(base: Path, extra_config: str) -> Iterator[Pods]:
    pods = Pods(base, extra_config)
    pods.daemon.start()
    try:
        yield pods
        for item in pods.daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items:
            pods.daemon.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=item.id))
        assert pods.leaks() == []
    finally:
        code = pods.daemon.stop()
        pods.cleanup_host()
    assert code == 0, pods.daemon.log()
    assert pods.daemon.slow_callbacks() == [], pods.daemon.log()


def test_tokens_expire_and_are_capped(tmp_path: Path) -> None:
    with running_pods(tmp_path, "[streaming]\ntoken_ttl_seconds = 1.0\nmax_tokens = 3\n") as pods:
        from tests.cri.pods import pod_config
        pod_id = pods.run(pod_config("ttl"))
        rt = pods.daemon.runtime
        url = str(rt.PortForward(cri.PortForwardRequest(pod_sandbox_id=pod_id)).url)
        time.sleep(1.5)
        with pytest.raises(UpgradeRefused) as refused:
            SpdyClient(url, protocols=("portforward.k8s.io",))
        assert refused.value.status == 404
        for _ in range(3):
            rt.PortForward(cri.PortForwardRequest(pod_sandbox_id=pod_id))
        with pytest.raises(grpc.RpcError) as err:
            rt.PortForward(cri.PortForwardRequest(pod_sandbox_id=pod_id))
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        time.sleep(1.5)  # expired tokens make room
        rt.PortForward(cri.PortForwardRequest(pod_sandbox_id=pod_id))


# --- port-forward ----------------------------------------------------------------------------------------------

WEB_SCRIPT = ("mkdir -p /www && head -c 8000000 /dev/urandom > /www/big && httpd -p 8080 -h /www && "
              "touch /www/ready && exec nc -ll -p 9000 -e sha256sum")


def web_pod(kube: Kubelet) -> tuple[str, str, str]:
    """A pod serving /www/big over HTTP on 8080 and answering on 9000 with the sha256 of what it was sent."""
    pod_id, pod = kube.pod()
    container_id = kube.run(pod_id, pod, "web", ["sh", "-c", WEB_SCRIPT])
    assert wait_until(lambda: kube.exec(container_id, ["test", "-f", "/www/ready"]).exit_code == 0, 30)
    digest = kube.exec(container_id, ["sha256sum", "/www/big"]).stdout.split()[0].decode()
    return pod_id, container_id, digest


class Forwarder:
    def __init__(self, url: str) -> None:
        self.client = SpdyClient(url, protocols=("portforward.k8s.io",))
        self.next_id = 0
        self.lock = threading.Lock()

    def pair(self, port: int) -> tuple[object, object]:
        with self.lock:
            request_id = str(self.next_id)
            self.next_id += 1
        error = self.client.open({"streamType": "error", "port": str(port), "requestID": request_id})
        data = self.client.open({"streamType": "data", "port": str(port), "requestID": request_id})
        return data, error

    def exchange(self, port: int, payload: bytes, half_close: bool = True) -> tuple[bytes, bytes]:
        data, error = self.pair(port)
        data.write(payload)  # type: ignore[attr-defined]
        if half_close:
            data.close()  # type: ignore[attr-defined]
        return data.read_all(120), error.read_all(120)  # type: ignore[attr-defined]


def http_body(response: bytes) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
    return body


def test_port_forward_parallel_and_large(kube: Kubelet) -> None:
    pod_id, _, digest = web_pod(kube)
    forwarder = Forwarder(port_forward_url(kube, pod_id))
    results: list[tuple[bytes, bytes]] = []

    def fetch() -> None:
        results.append(forwarder.exchange(8080, b"GET /big HTTP/1.0\r\n\r\n", half_close=False))

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert len(results) == 4
    for response, error in results:
        assert error == b""
        assert hashlib.sha256(http_body(response)).hexdigest() == digest
    # the other way: 12 MB up, half-closed; the pod answers with their hash and closes
    upload = os.urandom(12_000_000)
    answer, error = forwarder.exchange(9000, upload)
    assert error == b"" and answer.split()[0].decode() == hashlib.sha256(upload).hexdigest()
    # nothing listens on 9999: the error stream says so, the data stream just ends
    answer, error = forwarder.exchange(9999, b"hello?")
    assert answer == b"" and b"error forwarding port 9999" in error
    # a stream without a valid port or type is refused
    refused = forwarder.client.open({"streamType": "data", "port": "0", "requestID": "x"})
    assert refused.refused
    refused = forwarder.client.open({"streamType": "stdin", "port": "80", "requestID": "y"})
    assert refused.refused
    forwarder.client.close()


def test_port_forward_host_network_and_requested_ports(kube: Kubelet) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    pod_id, _ = kube.pod(linux=cri.LinuxPodSandboxConfig(security_context=cri.LinuxSandboxSecurityContext(
        namespace_options=cri.NamespaceOption(network=cri.NODE))))
    forwarder = Forwarder(port_forward_url(kube, pod_id, ports=(port,)))
    accepted: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            accepted.append(conn.recv(100))
            conn.sendall(b"host says hi")

    thread = threading.Thread(target=serve)
    thread.start()
    answer, error = forwarder.exchange(port, b"ping", half_close=False)
    thread.join(30)
    listener.close()
    assert (answer, error, accepted) == (b"host says hi", b"", [b"ping"])
    # only the requested ports may be forwarded
    assert forwarder.client.open({"streamType": "data", "port": str(port + 1), "requestID": "z"}).refused
    forwarder.client.close()


# --- crictl ----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_crictl_exec_and_port_forward(kube: Kubelet, tmp_path: Path) -> None:
    pod_id, container_id, digest = web_pod(kube)
    socket_url = f"unix://{kube.pods.daemon.socket}"
    config = tmp_path / "crictl.yaml"
    config.write_text(f"runtime-endpoint: {socket_url}\nimage-endpoint: {socket_url}\ntimeout: 30\n")
    crictl = [str(tools.tool("crictl")), "--config", str(config)]

    def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*crictl, *args], input=stdin, capture_output=True, timeout=120)

    assert run("exec", container_id, "echo", "hi").stdout == b"hi\n"
    piped = secrets.token_bytes(2_000_000)
    result = run("exec", "-i", container_id, "sha256sum", stdin=piped)
    assert result.returncode == 0 and result.stdout.split()[0].decode() == hashlib.sha256(piped).hexdigest()
    failed = run("exec", container_id, "sh", "-c", "exit 3")
    assert failed.returncode != 0 and b"exit code 3" in failed.stderr
    local = free_port()
    forward = subprocess.Popen([*crictl, "port-forward", pod_id, f"{local}:8080"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        def fetched() -> bytes | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{local}/big", timeout=60) as response:
                    return bytes(response.read())
            except OSError:
                return None

        assert wait_until(lambda: fetched() is not None, 30)
        body = fetched()
        assert body is not None and hashlib.sha256(body).hexdigest() == digest
    finally:
        forward.terminate()
        forward.wait(30)


def test_a_client_that_hangs_up_ends_its_session_without_an_error(kube: Kubelet) -> None:
    """client-go's port forwarder (critest's) closes its connection when it is done, without a GOAWAY: crispd's
    goodbye then meets a closed socket (the reset comes back at once on loopback, so shutting down the write side
    finds the socket no longer connected). The session ends as any other, crispd logs no failure."""
    pod_id, _, _ = web_pod(kube)
    for _ in range(5):
        forwarder = Forwarder(port_forward_url(kube, pod_id))
        response, error = forwarder.exchange(8080, b"GET /ready HTTP/1.0\r\n\r\n", half_close=False)
        assert error == b"" and b" 200 " in response.split(b"\r\n")[0]
        forwarder.client.abort()
    assert kube.pods.daemon.log().count("session (portforward.k8s.io) from") == 5
    assert not wait_until(lambda: "streaming connection from" in kube.pods.daemon.log(), 3)
