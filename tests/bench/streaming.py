"""Figures, not a test: the streaming server through a real crispd.

Prints the exec round trip (Exec RPC + upgrade + streams + `echo` + status; median and p95 of 100, ExecSync
beside it), and port-forward throughput over 100 MB each way with the tests' SPDY client (and through
`crictl port-forward` when /work/tools/bin/crictl exists), with crispd's RSS before and after.
Run as root from the repository: .venv/bin/python tests/bench/streaming.py [--execs 100] [--megabytes 100]
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cri import api as cri
from tests import tools
from tests.bench import ab
from tests.cri.pods import Pods, pod_config
from tests.cri.spdy_client import SpdyClient, finish, open_remote_command
from tests.leaks import wait_until

# crictl as scripts/build-k8s-tools builds it (make tools)
CRICTL = tools.bin_dir() / "crictl"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def exec_echo(pods: Pods, container_id: str) -> float:
    started = time.perf_counter()
    url = pods.daemon.runtime.Exec(cri.ExecRequest(container_id=container_id, cmd=["echo", "hi"], stdout=True,
                                                   stderr=True)).url
    client, streams = open_remote_command(url, stdin=False, stdout=True, stderr=True, tty=False)
    result = finish(client, streams)
    assert result.stdout == b"hi\n" and result.status["status"] == "Success", result
    return time.perf_counter() - started


def forward_pair(client: SpdyClient, port: int, request_id: str) -> tuple[object, object]:
    error = client.open({"streamType": "error", "port": str(port), "requestID": request_id})
    data = client.open({"streamType": "data", "port": str(port), "requestID": request_id})
    return data, error


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--execs", type=int, default=100)
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    size = args.megabytes * 1000 * 1000
    with tempfile.TemporaryDirectory(prefix="crisp-bench-") as tmp:
        base = Path(tmp)
        with ab.busybox_registry(base) as ref:
            side = ab.Side("crispd", base / "crispd", ref, None)
            pods = side.pods
            pods.daemon.start()
            rt = pods.daemon.runtime
            try:
                pods.daemon.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)), timeout=60)
                assert pods.daemon.proc is not None
                pid = pods.daemon.proc.pid
                config = pod_config("bench")
                pod_id = pods.run(config)
                script = (f"mkdir -p /www && head -c {size} /dev/urandom > /www/big && httpd -p 8080 -h /www && "
                          "touch /www/ready && exec nc -ll -p 9000 -e sha256sum")
                container = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="web"),
                                                image=cri.ImageSpec(image=ref), command=["sh", "-c", script])
                cid = rt.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=container,
                                                                    sandbox_config=config)).container_id
                rt.StartContainer(cri.StartContainerRequest(container_id=cid))

                def ready() -> bool:
                    return rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["test", "-f", "/www/ready"],
                                                           timeout=10)).exit_code == 0
                assert wait_until(ready, 120)
                digest = rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["sha256sum", "/www/big"],
                                                         timeout=60)).stdout.split()[0].decode()
                rss0 = rss_mb(pid)
                exec_echo(pods, cid)
                rounds = [exec_echo(pods, cid) for _ in range(args.execs)]
                syncs = []
                for _ in range(args.execs):
                    started = time.perf_counter()
                    rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["echo", "hi"], timeout=10))
                    syncs.append(time.perf_counter() - started)
                print(ab.summary("exec `echo` round trip (streaming)", rounds))
                print(ab.summary("ExecSync `echo` (for comparison)", syncs))

                url = rt.PortForward(cri.PortForwardRequest(pod_sandbox_id=pod_id)).url
                client = SpdyClient(url, protocols=("portforward.k8s.io",))
                data, _ = forward_pair(client, 8080, "0")
                started = time.perf_counter()
                data.write(b"GET /big HTTP/1.0\r\n\r\n")  # type: ignore[attr-defined]
                response = data.read_all(600)  # type: ignore[attr-defined]
                elapsed = time.perf_counter() - started
                body = response.partition(b"\r\n\r\n")[2]
                assert hashlib.sha256(body).hexdigest() == digest
                print(f"{'port-forward pod -> client (SPDY test client)':<40} {len(body) / elapsed / 1e6:7.1f} MB/s "
                      f"({len(body) / 1e6:.0f} MB in {elapsed:.2f} s)")
                with open("/dev/urandom", "rb") as random:
                    payload = random.read(size)
                data, _ = forward_pair(client, 9000, "1")
                started = time.perf_counter()
                data.write(payload)  # type: ignore[attr-defined]
                data.close()  # type: ignore[attr-defined]
                answer = data.read_all(600)  # type: ignore[attr-defined]
                elapsed = time.perf_counter() - started
                assert answer.split()[0].decode() == hashlib.sha256(payload).hexdigest()
                print(f"{'port-forward client -> pod (SPDY test client)':<40} {size / elapsed / 1e6:7.1f} MB/s "
                      f"({size / 1e6:.0f} MB in {elapsed:.2f} s)")
                client.close()
                if CRICTL.exists():
                    crictl_download(pods, pod_id, digest)
                print(f"crispd RSS: {rss0:.1f} MB before, {rss_mb(pid):.1f} MB after")
                rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
                rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
            finally:
                side.stop()


def crictl_download(pods: Pods, pod_id: str, digest: str) -> None:
    endpoint = f"unix://{pods.daemon.socket}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
    forward = subprocess.Popen([str(CRICTL), "--runtime-endpoint", endpoint, "--image-endpoint", endpoint,
                                "port-forward", pod_id, f"{local}:8080"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", local), timeout=1):
                    return True
            except OSError:
                return False
        assert wait_until(up, 30)
        started = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/big", timeout=600) as response:
            body = response.read()
        elapsed = time.perf_counter() - started
        assert hashlib.sha256(body).hexdigest() == digest
        print(f"{'port-forward pod -> curl (crictl)':<40} {len(body) / elapsed / 1e6:7.1f} MB/s "
              f"({len(body) / 1e6:.0f} MB in {elapsed:.2f} s)")
    finally:
        forward.terminate()
        forward.wait(30)


if __name__ == "__main__":
    main()
