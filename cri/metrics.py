"""crispd's Prometheus metrics, in a registry of its own (no global state).

Counters and histograms are updated where things happen (the RPC guard, PullImage, pod network setup, exits).
Gauges of what exists (containers and pods by state, shims, event subscribers) are read at scrape time from a
`StateSnapshot` that the metrics server takes on the event loop just before it renders the page in a worker
thread: the stores are only ever read on the loop. crispd's own process metrics come from prometheus_client's
process collector.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily

from cri.pod_metrics import PodMetrics, prometheus_families
from cri.rpcserver import StatusCode
from runtime.ttrpc.wire import code_of
from runtime.version import VERSION

# RPC latencies from sub-millisecond status calls to multi-minute image pulls
_RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# go-grpc-prometheus's labels: what dashboards built for containerd and CRI-O select on
_GRPC_LABELS = ["grpc_type", "grpc_service", "grpc_method"]
# grpc_code as Go's codes.Code.String() spells it (go-grpc-prometheus): CamelCase, "Canceled" with one l
_GO_CODE_NAMES = {code: "".join(part.title() for part in code.name.split("_")) for code in StatusCode}
_GO_CODE_NAMES.update({StatusCode.OK: "OK", StatusCode.CANCELLED: "Canceled"})
_PULL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_NETWORK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

CONTAINER_STATES = ("created", "running", "exited", "unknown")
POD_STATES = ("ready", "notready")


@dataclass(frozen=True)
class StateSnapshot:
    """What exists, counted on the event loop; `shims_alive` is called in the scraping thread (it reads /proc)."""

    containers: Mapping[str, int] = field(default_factory=dict)
    pods: Mapping[str, int] = field(default_factory=dict)
    event_subscribers: int = 0
    ready: bool = False
    shims_alive: Callable[[], int] | None = None
    # cAdvisor's metrics of every ready pod and its containers (cri/pod_metrics.py)
    workloads: Sequence[PodMetrics] = ()


class _StateCollector:
    """Gauges of what exists, from the last snapshot."""

    def __init__(self) -> None:
        self.snapshot: StateSnapshot | None = None

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        snap = self.snapshot
        if snap is None:
            return
        containers = GaugeMetricFamily("crisp_containers", "Containers crispd knows, by state.", labels=["state"])
        for state in sorted(set(CONTAINER_STATES) | set(snap.containers)):
            containers.add_metric([state], snap.containers.get(state, 0))
        yield containers
        pods = GaugeMetricFamily("crisp_pods", "Pod sandboxes crispd knows, by state.", labels=["state"])
        for state in sorted(set(POD_STATES) | set(snap.pods)):
            pods.add_metric([state], snap.pods.get(state, 0))
        yield pods
        if snap.shims_alive is not None:
            yield GaugeMetricFamily("crisp_shims", "crisp-shim processes running (one per container).",
                                    value=snap.shims_alive())
        yield GaugeMetricFamily("crisp_container_event_subscribers", "GetContainerEvents streams open.",
                                value=snap.event_subscribers)
        yield GaugeMetricFamily("crisp_ready", "1 when crispd serves the CRI, 0 while it starts or stops.",
                                value=1 if snap.ready else 0)
        yield from prometheus_families(snap.workloads)


class Metrics:
    """Every metric crispd exports; the daemon builds one and passes it where it is needed."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # no *_created series: prometheus_client's switch is process-wide, and crispd has one registry anyway
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # gRPC, under go-grpc-prometheus's names and labels (grpc_service is the full name, runtime.v1.RuntimeService)
        self.grpc_started = Counter(
            "grpc_server_started_total", "Total number of RPCs started on the server.", _GRPC_LABELS, registry=r)
        self.grpc_handled = Counter(
            "grpc_server_handled_total", "Total number of RPCs completed on the server, regardless of success or "
            "failure.", [*_GRPC_LABELS, "grpc_code"], registry=r)
        self.grpc_received = Counter(
            "grpc_server_msg_received_total", "Total number of RPC stream messages received on the server.",
            _GRPC_LABELS, registry=r)
        self.grpc_sent = Counter(
            "grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.", _GRPC_LABELS,
            registry=r)
        self.grpc_seconds = Histogram(
            "grpc_server_handling_seconds", "Histogram of response latency (seconds) of gRPC that had been "
            "application-level handled by the server.", _GRPC_LABELS, buckets=_RPC_BUCKETS, registry=r)
        self.image_pulls = Counter(
            "crisp_image_pulls_total", "PullImage calls that finished, successful or not.", registry=r)
        self.image_pull_failures = Counter(
            "crisp_image_pull_failures_total", "PullImage calls that failed, by gRPC status code.", ["code"],
            registry=r)
        self.image_pull_bytes = Counter(
            "crisp_image_pull_bytes_total", "Image layer bytes downloaded from registries.", registry=r)
        self.image_pull_duration = Histogram(
            "crisp_image_pull_duration_seconds", "Time of successful PullImage calls.", buckets=_PULL_BUCKETS,
            registry=r)
        self.oom_kills = Counter(
            "crisp_container_oom_kills_total", "Containers whose exit was an OOM kill, by pod and container "
            "(Kubernetes names).", ["namespace", "pod", "container"], registry=r)
        self.network_setup_duration = Histogram(
            "crisp_network_setup_duration_seconds", "Time to attach a pod to the pod network, by backend.",
            ["backend"], buckets=_NETWORK_BUCKETS, registry=r)
        self.network_setup_failures = Counter(
            "crisp_network_setup_failures_total", "Pod network setups that failed.", registry=r)
        self.event_subscribers_dropped = Counter(
            "crisp_container_event_subscribers_dropped_total",
            "GetContainerEvents subscribers dropped for falling too far behind.", registry=r)
        build = Gauge("crisp_build_info", "crispd's version (the value is always 1).", ["version"], registry=r)
        build.labels(version=VERSION).set(1)
        self._state = _StateCollector()
        r.register(self._state)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def rpc(self, kind: str, service: str, method: str) -> RpcMetrics:
        """The series of one RPC (`kind`: "unary" or "server_stream", as grpc_type), looked up once: the server
        updates them on every call, and a label lookup per update costs more than the update."""
        return RpcMetrics(self, kind, service, method)

    def observe_image_pull(self, seconds: float, error: BaseException | None) -> None:
        self.image_pulls.inc()
        if error is None:
            self.image_pull_duration.observe(seconds)
        else:
            cancelled = isinstance(error, asyncio.CancelledError)
            code = StatusCode.CANCELLED if cancelled else code_of(error, StatusCode.INTERNAL)
            self.image_pull_failures.labels(code=code.name).inc()

    def set_state(self, snapshot: StateSnapshot) -> None:
        self._state.snapshot = snapshot


class RpcMetrics:
    """go-grpc-prometheus's series of one RPC; each label child is looked up once, on its first update (a series
    appears when it first counts something, as before)."""

    def __init__(self, metrics: Metrics, kind: str, service: str, method: str) -> None:
        self._metrics = metrics
        self._labels = (kind, service, method)
        self._children: dict[Any, Any] = {}

    def _child(self, key: Any, family: Any, *extra: str) -> Any:
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*self._labels, *extra)
        return child

    def started(self) -> None:
        """The RPC arrived with its request."""
        self._child("started", self._metrics.grpc_started).inc()
        self._child("received", self._metrics.grpc_received).inc()

    def sent(self) -> None:
        """One response message (a unary answer, or one item of a stream)."""
        self._child("sent", self._metrics.grpc_sent).inc()

    def handled(self, code: StatusCode, seconds: float) -> None:
        self._child(code, self._metrics.grpc_handled, _GO_CODE_NAMES[code]).inc()
        self._child("seconds", self._metrics.grpc_seconds).observe(seconds)
