"""crispd killed (kill -9) while exec, attach and port-forward streams are open: every stream ends, with an error
(no status), within 5 s; the exec processes are killed and reaped; the container's log keeps growing; after the
restart a new exec works."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from cri import api as cri
from tests.cri.conftest import TestImages
from tests.cri.pods import Pods
from tests.cri.spdy_client import SpdyClient, finish, open_remote_command
from tests.cri.test_containers import Kubelet, read_log
from tests.cri.test_streaming import Forwarder, attach_url, exec_url, port_forward_url
from tests.leaks import processes_mentioning, wait_until

pytestmark = pytest.mark.root

TALKER = ["sh", "-c", "i=0; while :; do echo line $i; i=$((i+1)); sleep 0.05; done"]
ECHO_SERVER = ["nc", "-ll", "-p", "9000", "-e", "cat"]


def _zombies_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                found.append(int(entry))
    return found


def test_streams_end_when_crispd_is_killed(pods: Pods, test_images: TestImages, tmp_path: Path) -> None:
    kube = Kubelet(pods, test_images, tmp_path / "logs")
    daemon = pods.daemon
    pod_id, pod = kube.pod()
    talker = kube.run(pod_id, pod, "talker", TALKER)
    kube.run(pod_id, pod, "echo", ECHO_SERVER)
    log_path = Path(kube.status(talker).log_path)
    shim_pid = json.loads((daemon.state / "containers" / talker / "shim.json").read_text())["pid"]

    clients: dict[str, SpdyClient] = {}
    execs = {}
    for name, tty, marker in (("exec", False, "sleep 12345"), ("exec-tty", True, "sleep 23456")):
        url = exec_url(kube, talker, ["sh", "-c", f"echo started; exec {marker}"], stdout=True, stdin=tty, tty=tty)
        clients[name], execs[name] = open_remote_command(url, stdin=tty, stdout=True, stderr=False, tty=tty)
        execs[name]["stdout"].read_until(b"started")
    clients["attach"], attached = open_remote_command(attach_url(kube, talker, stdout=True, stderr=True),
                                                      stdin=False, stdout=True, stderr=True, tty=False)
    attached["stdout"].read_until(b"line")
    forwarder = Forwarder(port_forward_url(kube, pod_id))
    clients["port-forward"] = forwarder.client
    data, _ = forwarder.pair(9000)

    def echoed() -> bool:
        data.write(b"ping\n")  # type: ignore[attr-defined]
        return b"ping" in (data.read(timeout=1) or b"")  # type: ignore[attr-defined]

    assert wait_until(echoed, 20)  # nc may not listen yet at first
    assert all(marker in " ".join(processes_mentioning(marker)) for marker in ("sleep 12345", "sleep 23456"))

    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    daemon.proc.wait(10)
    for name, client in clients.items():
        assert client.closed.wait(max(0.0, killed_at + 5 - time.monotonic())), f"{name} still open after 5 s"
    for streams in execs.values():  # ended with an error: no status ever came
        assert streams["error"].read_all(1) == b""
    size = log_path.stat().st_size
    assert wait_until(lambda: log_path.stat().st_size > size + 200, 10)  # the shim keeps logging
    # the exec processes were killed with their session and reaped by the shim; the pod's netns helper went
    assert wait_until(lambda: processes_mentioning("sleep 12345") + processes_mentioning("sleep 23456") == [], 5)
    assert wait_until(lambda: _zombies_of(shim_pid) == [], 5), _zombies_of(shim_pid)
    assert wait_until(lambda: processes_mentioning("netns_helper.py") == [] or all(
        pod_id not in p for p in processes_mentioning("netns_helper.py")), 5)

    daemon.stop()
    daemon.socket.unlink()
    daemon.start()
    kube.rt = daemon.runtime
    assert kube.status(talker).state == cri.CONTAINER_RUNNING
    assert kube.exec(talker, ["echo", "after"]).stdout == b"after\n"
    client, streams = open_remote_command(exec_url(kube, talker, ["echo", "streamed"], stdout=True),
                                          stdin=False, stdout=True, stderr=False, tty=False)
    assert finish(client, streams).stdout == b"streamed\n"
    kube.rt.StopContainer(cri.StopContainerRequest(container_id=talker, timeout=0))
    numbers = [int(text.split()[1]) for _, tag, text in read_log(log_path) if tag == "F"]
    assert numbers == list(range(len(numbers)))  # nothing lost while crispd was away
