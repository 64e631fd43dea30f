"""Prometheus (`runtime/metrics.py`): calls recorded by method and code, served on the
process's metrics address; a taken port does not stop the process."""

from __future__ import annotations

import urllib.request

from devstack.processes import free_port
from runtime.metrics import record_call, serve_metrics


def test_recorded_calls_are_served_on_the_metrics_address() -> None:
    port = free_port()
    serve_metrics(f"127.0.0.1:{port}")
    record_call("/modelyard.test.v1.Test/Call", "NOT_FOUND", 0.02)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert (
        'modelyard_grpc_server_calls_total{code="NOT_FOUND",method="/modelyard.test.v1.Test/Call"}'
        in text
    )


def test_a_taken_or_empty_address_is_not_fatal() -> None:
    port = free_port()
    serve_metrics(f"127.0.0.1:{port}")
    serve_metrics(f"127.0.0.1:{port}")  # taken now: logged, not raised
    serve_metrics("")
