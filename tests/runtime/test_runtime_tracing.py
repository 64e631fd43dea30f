"""Trace context (`runtime/tracing.py`): what one hop injects the next extracts, over
NATS headers and gRPC metadata alike."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from runtime.tracing import context_from_headers, context_from_pairs, headers_with_context


@pytest.fixture
def provider() -> TracerProvider:
    # A recording provider of the test's own; the global one stays the no-op default.
    return TracerProvider()


def test_context_crosses_headers_and_metadata(provider: TracerProvider) -> None:
    with provider.get_tracer("test").start_as_current_span("publish") as span:
        headers = headers_with_context({"Nats-Msg-Id": "j1"})
    trace_id = span.get_span_context().trace_id
    assert headers["Nats-Msg-Id"] == "j1"
    assert headers["traceparent"].split("-")[1] == f"{trace_id:032x}"
    for carried in (
        context_from_headers(headers),
        context_from_pairs([*list(headers.items()), ("bin-key", b"\x00")]),
    ):
        assert trace.get_current_span(carried).get_span_context().trace_id == trace_id


def test_no_context_no_header() -> None:
    assert "traceparent" not in headers_with_context()
    assert not trace.get_current_span(context_from_headers(None)).get_span_context().is_valid
