"""crispd's Prometheus endpoint: the page parses with prometheus_client's parser, counters move with the RPCs
made, gauges follow what exists, /healthz; and a real Prometheus (Debian's) scrapes crispd with deploy's config."""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cri import api as cri
from runtime.cgroups import CgroupV2Manager
from runtime.cgroups.fs import read_flat_keyed
from tests.cri.crispd import Crispd
from tests.cri.pods import running_pods
from tests.cri.test_containers import Kubelet
from tests.leaks import wait_until

if TYPE_CHECKING:
    from tests.cri.conftest import TestImages

DEPLOY_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "prometheus.yml"


def scrape(daemon: Crispd) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the page: (name, sorted labels) -> value."""
    text = urllib.request.urlopen(daemon.metrics_url(), timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def http(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_rpc_counters_move_and_the_page_parses(crispd: Crispd) -> None:
    before = scrape(crispd)
    for _ in range(3):
        crispd.runtime.Version(cri.VersionRequest())
    with pytest.raises(grpc.RpcError):
        crispd.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id="nosuchcontainer"))
    after = scrape(crispd)
    runtime = {"grpc_type": "unary", "grpc_service": "runtime.v1.RuntimeService"}
    ok = {**runtime, "grpc_method": "Version", "grpc_code": "OK"}
    assert value(after, "grpc_server_handled_total", **ok) == value(before, "grpc_server_handled_total", **ok) + 3
    assert value(after, "grpc_server_handled_total", **runtime, grpc_method="ContainerStatus",
                 grpc_code="NotFound") == 1
    assert value(after, "grpc_server_started_total", **runtime, grpc_method="ContainerStatus") == 1
    assert value(after, "grpc_server_msg_sent_total", **runtime, grpc_method="ContainerStatus") == 0
    assert value(after, "grpc_server_handling_seconds_count", **runtime, grpc_method="Version") >= 3
    assert not [name for name, _ in after if name.endswith("_created")]  # no *_created series
    assert value(after, "crisp_ready") == 1
    assert value(after, "crisp_containers", state="running") == 0 and value(after, "crisp_pods", state="ready") == 0
    assert value(after, "process_resident_memory_bytes") > 0
    assert value(after, "crisp_build_info", version=crispd.runtime.Version(cri.VersionRequest()).runtime_version) == 1


def test_http_details(crispd: Crispd) -> None:
    url = crispd.metrics_url()
    status, headers, body = http(crispd.metrics_url("/healthz"))
    assert (status, body) == (200, b"ok\n")
    status, headers, body = http(url, {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    status, headers, body = http(url, {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert b"grpc_server_handled_total" in gzip.decompress(body)
    status, _, body = http(url, method="HEAD")
    assert status == 200 and body == b""
    assert http(crispd.metrics_url("/nothing"))[0] == 404
    assert http(url, method="POST")[0] == 405
    # a request that never ends its headers, or sends too much of them, gets nothing or an error, never a hang
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"y" * 70000 + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 431")


def test_healthz_says_not_ready_until_crispd_serves(tmp_path: Path) -> None:
    daemon = Crispd(tmp_path, config='delay_points = {"crispd.ready" = 3000}\n')  # under [debug]
    daemon.spawn()
    try:
        assert wait_until(lambda: "metrics on http://" in daemon.log(), 30), daemon.log()
        status, _, body = http(daemon.metrics_url("/healthz"))
        assert (status, body) == (503, b"not ready: crispd is starting\n")
        assert value(scrape(daemon), "crisp_ready") == 0
        daemon.wait_ready()
        assert http(daemon.metrics_url("/healthz"))[:3:2] == (200, b"ok\n")
        assert value(scrape(daemon), "crisp_ready") == 1
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_pull_pod_and_container_metrics(tmp_path: Path, test_images: TestImages) -> None:
    with running_pods(tmp_path) as pods:
        daemon = pods.daemon
        before = scrape(daemon)
        kubelet = Kubelet(pods, test_images, tmp_path / "logs")  # pulls the image
        with pytest.raises(grpc.RpcError):
            daemon.images.PullImage(cri.PullImageRequest(
                image=cri.ImageSpec(image=f"{test_images.registry}/crisp/nosuchimage:latest")), timeout=60)
        pod_id, pod = kubelet.pod("metrics")
        kubelet.run(pod_id, pod, "app", ["sleep", "1000"])
        kubelet.create(pod_id, pod, "later", ["sleep", "1000"])
        after = scrape(daemon)
        assert value(after, "crisp_image_pulls_total") == value(before, "crisp_image_pulls_total") + 2
        assert value(after, "crisp_image_pull_failures_total", code="NOT_FOUND") == 1
        assert value(after, "crisp_image_pull_bytes_total") > 100_000  # the busybox layer came over the wire
        assert value(after, "crisp_image_pull_duration_seconds_count") == 1
        assert value(after, "crisp_network_setup_duration_seconds_count", backend="bridge") == 1
        assert value(after, "crisp_pods", state="ready") == 1
        assert value(after, "crisp_containers", state="running") == 1
        assert value(after, "crisp_containers", state="created") == 1
        # CreateContainer answers before its shim is ready (it is spawned alongside): the second shim comes soon
        assert value(after, "crisp_shims") in (1, 2)
        assert wait_until(lambda: value(scrape(daemon), "crisp_shims") == 2, 10)
        kubelet.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        after = scrape(daemon)
        assert value(after, "crisp_pods", state="notready") == 1
        assert value(after, "crisp_containers", state="exited") == 1
        assert value(after, "crisp_container_oom_kills_total") == 0


def test_workload_metrics_on_crispds_page(tmp_path: Path, test_images: TestImages) -> None:
    """cAdvisor's per-container and per-pod series on crispd's own /metrics, from the table ListMetricDescriptors
    gives (names, help, label keys), with exact values that agree with the cgroup."""
    with running_pods(tmp_path) as pods:
        daemon = pods.daemon
        kubelet = Kubelet(pods, test_images, tmp_path / "logs")
        pod_id, pod = kubelet.pod("busy")
        burner = kubelet.run(pod_id, pod, "burner", ["sh", "-c", "while :; do :; done"])
        cgroup = CgroupV2Manager.discover().mount / json.loads(daemon.runtime.ContainerStatus(
            cri.ContainerStatusRequest(container_id=burner, verbose=True)).info["info"])["cgroup"].lstrip("/")
        assert wait_until(lambda: cpu_seconds(cgroup) > 0.5, 30)
        before = cpu_seconds(cgroup)
        text = urllib.request.urlopen(daemon.metrics_url(), timeout=30).read().decode()
        after = cpu_seconds(cgroup)
        # by the name of their samples (a counter family is named without _total)
        families = {f.name + ("_total" if f.type == "counter" else ""): f for f in text_string_to_metric_families(text)}
        labels = {"id": burner, "image": test_images.busybox, "namespace": "default", "pod": "busy",
                  "container": "burner"}
        (usage,) = [s for s in families["container_cpu_usage_seconds_total"].samples if s.labels["pod"] == "busy"
                    and s.labels["container"] == "burner"]
        assert usage.labels == {**labels, "cpu": "total"}
        assert before <= usage.value <= after and usage.value != int(usage.value)  # exact, not whole seconds
        assert families["container_cpu_usage_seconds_total"].type == "counter"
        # the pod: its cgroup (container "") and its network (container "POD")
        pod_series = {(s.name, s.labels["container"]) for f in families.values() for s in f.samples
                      if s.labels.get("pod") == "busy" and s.labels.get("id") == pod_id}
        assert ("container_cpu_usage_seconds_total", "") in pod_series
        assert ("container_network_receive_bytes_total", "POD") in pod_series
        # every cAdvisor family on the page is one of ListMetricDescriptors's, with its help and label keys
        described = {d.name: d for d in daemon.runtime.ListMetricDescriptors(
            cri.ListMetricDescriptorsRequest()).descriptors}
        assert len([name for name in families if name.startswith("container_")]) > 10
        for name, family in families.items():
            if not name.startswith("container_"):
                continue
            assert family.documentation == described[name].help, name
            for sample in family.samples:
                assert sorted(sample.labels) == sorted(described[name].label_keys), name
        assert not [name for name in families if name.endswith("_created")]
        assert "_created" not in text
        if not (cgroup / "memory.current").exists():  # no memory controller: no memory series, not zeros
            assert not [name for name in families if name.startswith("container_memory_")]


def cpu_seconds(cgroup: Path) -> float:
    stat = read_flat_keyed(cgroup / "cpu.stat")
    assert stat is not None
    return stat["usage_usec"] / 1e6


@pytest.mark.root
def test_a_real_prometheus_scrapes_crispd(tmp_path: Path, test_images: TestImages,
                                          record_property: Callable[[str, object], None]) -> None:
    """A real Prometheus with deploy's config sees crispd, its gRPC metrics and a container's cAdvisor series."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("needs Debian's prometheus (make test installs it)")
    (tmp_path / "crispd").mkdir()
    with running_pods(tmp_path / "crispd") as pods:
        kubelet = Kubelet(pods, test_images, tmp_path / "logs")
        pod_id, pod = kubelet.pod("prom")
        kubelet.run(pod_id, pod, "app", ["sh", "-c", "while :; do :; done"])
        prometheus_scrapes(pods.daemon, tmp_path, binary, record_property)


def prometheus_scrapes(crispd: Crispd, tmp_path: Path, binary: str,
                       record_property: Callable[[str, object], None]) -> None:
    target = crispd.metrics_url("").split("//")[1]
    config = DEPLOY_CONFIG.read_text()
    assert '"127.0.0.1:9647"' in config
    (tmp_path / "prometheus.yml").write_text(config.replace('"127.0.0.1:9647"', json.dumps(target)))
    with socket.socket() as s:  # Prometheus takes no port 0: a free one now, on loopback
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log, close_fds=True, start_new_session=True)
    try:
        api = f"http://127.0.0.1:{port}/api/v1"

        def target_health() -> str:
            try:
                data = json.loads(urllib.request.urlopen(f"{api}/targets", timeout=5).read())
            except OSError:
                return ""
            targets = [t for t in data["data"]["activeTargets"] if t["labels"].get("job") == "crisp"]
            return str(targets[0]["health"]) if targets else ""

        # the first scrape comes within one scrape interval of the example config (15 s)
        assert wait_until(lambda: target_health() == "up", 90), (tmp_path / "prometheus.log").read_text()

        def query(promql: str) -> list[str]:
            url = f"{api}/query?query={urllib.parse.quote(promql)}"
            return [r["value"][1] for r in json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]["result"]]

        # the scrape's samples become visible to queries a moment after the target turns up
        assert wait_until(lambda: query('up{job="crisp"}') == ["1"], 30)
        assert query('crisp_ready{job="crisp",component="crispd"}') == ["1"]
        assert float(query('grpc_server_handled_total{job="crisp",grpc_service="runtime.v1.RuntimeService",'
                           'grpc_method="Version",grpc_code="OK"}')[0]) >= 1
        per_container = 'container_cpu_usage_seconds_total{job="crisp",namespace="default",pod="prom",container="app"}'
        (seconds,) = query(per_container)
        assert float(seconds) > 0
        record_property("summary", f"Prometheus: {per_container} = {seconds}")
        assert query('count({job="crisp",__name__=~".+_created"})') == []
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

