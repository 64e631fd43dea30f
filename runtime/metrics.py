"""Prometheus metrics: the shared RPC metrics and each process's endpoint.

Every gRPC server records calls by method and code (the request-context
interceptor does it); each service adds its own metrics next to the code that
knows them (jobs by state, queue depth, training duration, ingest bytes). A
gRPC service exposes them on `metrics_address` (`GET /metrics`); the gateway
serves them on its own HTTP port.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

from runtime.logs import error_fields

logger = logging.getLogger("modelyard.metrics")

# Buckets from 1 ms to 60 s: unary calls are milliseconds, uploads and streams long.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

GRPC_SERVER_CALLS = Counter(
    "modelyard_grpc_server_calls",
    "gRPC calls handled, by method and status code.",
    ["method", "code"],
)
GRPC_SERVER_SECONDS = Histogram(
    "modelyard_grpc_server_call_seconds",
    "gRPC call latency, by method and status code.",
    ["method", "code"],
    buckets=LATENCY_BUCKETS,
)


def record_call(method: str, code: str, seconds: float) -> None:
    GRPC_SERVER_CALLS.labels(method, code).inc()
    GRPC_SERVER_SECONDS.labels(method, code).observe(seconds)


def serve_metrics(address: str | None) -> None:
    """Expose `GET /metrics` on `host:port` (in a thread); empty or None turns it off."""
    if not address:
        return
    host, _, port = address.rpartition(":")
    try:
        start_http_server(int(port), addr=host or "0.0.0.0")
    except OSError as error:
        # Metrics must not keep a service from serving: say so loudly and go on.
        logger.error(
            "metrics endpoint not started", extra={"address": address, **error_fields(error)}
        )
        return
    logger.info("metrics endpoint", extra={"address": address})
