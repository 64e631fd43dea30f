"""The Dataset service's own Prometheus metrics (RPC metrics come from runtime)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

INGESTED_BYTES = Counter(
    "modelyard_dataset_ingested_bytes", "Bytes of CSV ingested into READY datasets."
)
UPLOADS = Counter(
    "modelyard_dataset_uploads",
    "Finished uploads, by outcome (READY or the failure reason).",
    ["outcome"],
)
INGEST_SECONDS = Histogram(
    "modelyard_dataset_ingest_seconds",
    "Upload start to READY, in seconds.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
