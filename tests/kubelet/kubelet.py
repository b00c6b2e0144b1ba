"""A real kubelet, standalone (no API server: static pods from a manifest directory), pointed at a crispd socket, and
a client for its own HTTP API (/pods, /stats/summary, /containerLogs, /run, /exec).

Everything it writes is per run, under one base dir: root dir, pod logs, certificates, manifests, its config and
log. Its ports are free ones. It runs in a mount namespace of its own (tests/kubelet/hostguard.py) that keeps it
from changing host sysctls and from holding copies of other tests' mounts.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Generator
from pathlib import Path
from typing import Any

import urllib3

from tests.cri.spdy_client import ExecResult, finish, open_remote_command
from tests.registrytools import free_port

NODE_NAME = "crisp-node"
NAMESPACE = "default"


# crispd's config for a hybrid host: containers whose limits need a controller cgroup v2 lacks run without them
CGROUP_CONFIG = 'missing_controller = "warn"\n'


def hybrid_host_settings() -> dict[str, Any]:
    """The KubeletConfiguration fields every kubelet of the tests needs on this kind of host (the cluster tier's
    too)."""
    return {
        # a hybrid host counts as cgroup v1: run anyway, and make no QoS or node-allocatable cgroups (they would go
        # into the host's v1 hierarchies); the VM tier runs the QoS path. "none" rather than an empty list, which
        # kubeadm's config drops (the kubelet then defaults to ["pods"], which needs cgroupsPerQOS)
        "failCgroupV1": False, "cgroupsPerQOS": False, "enforceNodeAllocatable": ["none"],
        "makeIPTablesUtilChains": False, "failSwapOn": False,
        # never garbage-collect the test's images, never evict for a host's disk filled by other work
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "0%", "nodefs.available": "0%", "imagefs.available": "0%",
                         "nodefs.inodesFree": "0%"},
    }


class Kubelet:
    def __init__(self, binary: Path, base: Path, runtime_socket: Path, **config: Any) -> None:
        """`config` adds to or overrides the KubeletConfiguration fields this class sets."""
        self.binary = binary
        self.base = base
        self.root = base / "root"
        self.manifests = base / "manifests"
        self.pod_logs = base / "pods-logs"
        self.certs = base / "pki"
        self.facades = base / "sysctl"
        self.config_path = base / "kubelet-config.json"
        self.log_path = base / "kubelet.log"
        self.runtime_socket = runtime_socket
        self.port, self.healthz_port, self.read_only_port = free_port(), free_port(), free_port()
        self.config = self.configuration() | config
        self.proc: subprocess.Popen[bytes] | None = None
        self.request_timeout = 30.0  # one API request (the VM tier's emulated guest needs more)
        self.http = urllib3.PoolManager()  # plain HTTP: healthz and the read-only port
        self._https: urllib3.PoolManager | None = None

    def configuration(self) -> dict[str, Any]:
        endpoint = f"unix://{self.runtime_socket}"
        return {
            "kind": "KubeletConfiguration", "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "containerRuntimeEndpoint": endpoint, "imageServiceEndpoint": endpoint,
            "staticPodPath": str(self.manifests), "fileCheckFrequency": "1s",
            "podLogsDir": str(self.pod_logs),
            "address": "127.0.0.1", "port": self.port, "readOnlyPort": self.read_only_port,
            "healthzBindAddress": "127.0.0.1", "healthzPort": self.healthz_port,
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            **hybrid_host_settings(),
        }

    # ------------------------------------------------------------------------------------------- process

    def command(self) -> list[str]:
        guard = [sys.executable, "-m", "tests.kubelet.hostguard", "--facades", str(self.facades),
                 "--keep", str(self.base), "--keep", str(self.runtime_socket.parent), "--keep", str(self.binary)]
        return [*guard, "--", str(self.binary), f"--config={self.config_path}", f"--root-dir={self.root}",
                f"--cert-dir={self.certs}", f"--hostname-override={NODE_NAME}", "--v=2"]

    @property
    def dirs(self) -> list[Path]:
        """What the kubelet (and crisp, for its pods' logs) writes; its log and config stay beside them."""
        return [self.root, self.manifests, self.pod_logs, self.certs, self.facades]

    def start(self, timeout: float = 60) -> Kubelet:
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=1))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, close_fds=True,
                                         start_new_session=True, cwd=Path(__file__).resolve().parents[2])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the kubelet exited with {self.proc.returncode}:\n{self.log()[-6000:]}")
            if self.healthy():
                return self
            time.sleep(0.2)
        raise RuntimeError(f"the kubelet was not healthy within {timeout}s:\n{self.log()[-6000:]}")

    def healthy(self) -> bool:
        """Its healthz, read-only and main (TLS) ports all answer /healthz (they start one after the other)."""
        urls = [f"http://127.0.0.1:{self.healthz_port}/healthz", f"http://127.0.0.1:{self.read_only_port}/healthz",
                f"{self.api}/healthz"]
        try:
            return all((self.https if url.startswith("https:") else self.http).request(
                "GET", url, retries=False, timeout=5).status == 200 for url in urls)
        except (urllib3.exceptions.HTTPError, OSError):  # OSError: no serving certificate yet
            return False

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, then SIGKILL after the timeout; its exit status (None if it was never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ------------------------------------------------------------------------------------------- static pods

    def add_pod(self, manifest: dict[str, Any]) -> str:
        """Write a static pod manifest (atomically: the kubelet never reads half a file); returns the pod's name as
        the kubelet reports it (`<name>-<node>`)."""
        name = manifest["metadata"]["name"]
        manifest.setdefault("apiVersion", "v1")
        manifest.setdefault("kind", "Pod")
        manifest["metadata"].setdefault("namespace", NAMESPACE)
        tmp = self.manifests / f".{name}.json.tmp"  # dot files are not read
        tmp.write_text(json.dumps(manifest, indent=1))
        tmp.rename(self.manifests / f"{name}.json")
        return self.pod_name(name)

    @staticmethod
    def pod_name(name: str) -> str:
        """A static pod's name as the kubelet reports it."""
        return f"{name}-{NODE_NAME}"

    def remove_pod(self, name: str) -> None:
        (self.manifests / f"{name}.json").unlink()

    # ------------------------------------------------------------------------------------------- API

    @property
    def api(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def serving_cert(self) -> Path:
        """The kubelet's self-signed serving certificate (it makes one in its cert dir at its first start, with
        the CA that signed it): the client verifies the kubelet against it, for the node's name."""
        return self.certs / "kubelet.crt"

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.serving_cert))

    @property
    def https(self) -> urllib3.PoolManager:
        if self._https is None:
            self._https = urllib3.PoolManager(ssl_context=self.tls_context(), assert_hostname=NODE_NAME)
        return self._https

    def _get_json(self, url: str) -> Any:
        http = self.https if url.startswith("https:") else self.http
        try:
            response = http.request("GET", url, timeout=self.request_timeout, retries=False)
        except urllib3.exceptions.HTTPError:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the kubelet exited with {self.proc.returncode}:\n{self.log()[-6000:]}") from None
            raise
        assert response.status == 200, f"GET {url}: {response.status} {response.data[:2000]!r}"
        return json.loads(response.data)

    def pods(self) -> list[dict[str, Any]]:
        """The kubelet's own view of its pods (the read-only port's /pods, a v1.PodList)."""
        items: list[dict[str, Any]] = self._get_json(f"http://127.0.0.1:{self.read_only_port}/pods")["items"] or []
        return items

    def pod(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.pods() if p["metadata"]["name"] == name), None)

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = self._get_json(f"{self.api}/stats/summary")
        return summary

    def logs(self, pod: str, container: str, **query: str) -> bytes:
        response = self.https.request("GET", f"{self.api}/containerLogs/{NAMESPACE}/{pod}/{container}",
                                     fields=query, timeout=self.request_timeout, retries=False)
        assert response.status == 200, f"containerLogs: {response.status} {response.data[:2000]!r}"
        return bytes(response.data)

    def follow_logs(self, pod: str, container: str, **query: str) -> Generator[bytes, None, None]:
        """`follow=true`: chunks as the kubelet sends them, until the caller stops reading (or it ends)."""
        response = self.https.request("GET", f"{self.api}/containerLogs/{NAMESPACE}/{pod}/{container}",
                                     fields={"follow": "true", **query}, timeout=urllib3.Timeout(connect=5,
                                                                                              read=60),
                                     retries=False, preload_content=False)
        try:
            assert response.status == 200, f"containerLogs: {response.status} {response.data[:2000]!r}"
            yield from response.stream(1024, decode_content=False)
        finally:
            response.release_conn()
            response.close()

    def run(self, pod: str, container: str, command: str) -> tuple[int, bytes]:
        """POST /run (the kubelet's ExecSync): its status and body."""
        url = f"{self.api}/run/{NAMESPACE}/{pod}/{container}?" + urllib.parse.urlencode({"cmd": command})
        response = self.https.request("POST", url, timeout=self.request_timeout, retries=False)
        return response.status, bytes(response.data)

    def exec(self, pod: str, container: str, command: list[str], stdin: bytes | None = None) -> ExecResult:
        """/exec as kubectl drives it through the API server: SPDY to the kubelet, which proxies the upgrade to
        the runtime's streaming URL (from crisp's Exec)."""
        query = [("command", c) for c in command] + [("output", "1"), ("error", "1")]
        if stdin is not None:
            query.append(("input", "1"))
        url = f"{self.api}/exec/{NAMESPACE}/{pod}/{container}?" + urllib.parse.urlencode(query)
        client, streams = open_remote_command(url, stdin=stdin is not None, stdout=True, stderr=True, tty=False,
                                              tls=self.tls_context(), server_hostname=NODE_NAME)
        if stdin is not None:
            streams["stdin"].write(stdin)
            streams["stdin"].close()
        return finish(client, streams)
