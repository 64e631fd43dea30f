"""OpenTelemetry tracing, exported over OTLP/HTTP when configured, off otherwise.

Context crosses every hop in the standard W3C `traceparent` header: gRPC
metadata (the interceptors in `interceptors.py` and `channels.py`), NATS message
headers (`headers_with_context` when publishing, `context_from_headers` when
consuming) and HTTP (the gateway). With no `MODELYARD_OTLP_ENDPOINT` the global
tracer is OpenTelemetry's no-op one: spans cost next to nothing and nothing is
exported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Tracer

logger = logging.getLogger("modelyard.tracing")

_provider_shutdown: list[object] = []


def configure_tracing(service: str, otlp_endpoint: str | None) -> None:
    """Export spans of this process as `modelyard-<service>` to `otlp_endpoint`."""
    if not otlp_endpoint:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"modelyard-{service}"}))
    exporter = OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    _provider_shutdown.append(provider)
    logger.info("tracing on", extra={"otlp_endpoint": otlp_endpoint})


def shutdown_tracing() -> None:
    """Flush what is buffered; call once when the process stops."""
    for provider in _provider_shutdown:
        provider.shutdown()  # type: ignore[attr-defined]
    _provider_shutdown.clear()


def tracer() -> Tracer:
    return trace.get_tracer("modelyard")


def context_from_pairs(pairs: Iterable[tuple[str, str | bytes]]) -> context.Context:
    """The trace context carried by gRPC metadata or any list of header pairs."""
    carrier = {key: value for key, value in pairs if isinstance(value, str)}
    return propagate.extract(carrier)


def context_from_headers(headers: Mapping[str, str] | None) -> context.Context:
    return propagate.extract(dict(headers or {}))


def headers_with_context(headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """`headers` plus the current trace context, for a NATS message or an HTTP call."""
    carrier = dict(headers or {})
    propagate.inject(carrier)
    return carrier
