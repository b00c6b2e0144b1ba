"""crispd's Prometheus metrics, in a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# RPC latencies from sub-millisecond status calls to multi-minute image pulls
_RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """Every metric crispd exports; the daemon builds one and passes it where it is needed."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.grpc_requests = Counter(
            "crisp_grpc_requests_total",
            "CRI RPCs handled, by method and gRPC status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.grpc_duration = Histogram(
            "crisp_grpc_request_duration_seconds",
            "Time to handle a CRI RPC, by method.",
            ["method"],
            buckets=_RPC_BUCKETS,
            registry=self.registry,
        )

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.grpc_requests.labels(method=method, code=code).inc()
        self.grpc_duration.labels(method=method).observe(seconds)
