"""Settings of the Dataset service, read from `MODELYARD_DATASET_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from runtime.settings import (
    ApiTokenClientSettings,
    CommonSettings,
    ListenAddress,
    MetricsAddress,
)

MiB = 1024 * 1024


class DatasetSettings(CommonSettings, ApiTokenClientSettings):
    model_config = SettingsConfigDict(env_prefix="MODELYARD_DATASET_")

    listen_address: ListenAddress = "127.0.0.1:50051"
    jobs_service_address: str = Field(
        default="127.0.0.1:50052",
        description="host:port of JobsService, which checks API tokens presented here.",
    )
    metrics_address: MetricsAddress = "127.0.0.1:9451"
    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the service's own database (sqlite:///... or postgresql://...). "
            "Default: SQLite at <state_dir>/dataset.db."
        ),
    )
    blob_store: Literal["local", "s3"] = Field(
        default="local", description="Where CSV and Parquet files are kept: local files or S3."
    )
    blob_dir: Path | None = Field(
        default=None, description="Root folder of the local blob store. Default: <state_dir>/blobs."
    )
    s3_bucket: str = Field(
        default="modelyard-datasets",
        description="S3 bucket of the S3 blob store (created if missing).",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 API endpoint (MinIO, moto...). Default: AWS."
    )
    s3_region: str = Field(default="us-east-1", description="S3 region.")
    s3_part_bytes: int = Field(
        default=5 * MiB,
        ge=5 * MiB,
        description=(
            "Size of an S3 multipart upload's parts and of an original's segments "
            "(memory: x (parts in flight + 1) x 2 files per upload)."
        ),
    )
    s3_max_parts_in_flight: int = Field(
        default=2,
        ge=1,
        description="Parts of one S3 upload sent concurrently (memory: x part size).",
    )
    upload_window_bytes: int = Field(
        default=4 * MiB,
        ge=64 * 1024,
        le=256 * MiB,
        description=(
            "HTTP/2 receive window of a call: the bytes a client may send ahead of what the "
            "service has taken in (memory: x concurrent uploads). A client far away gets at "
            "most this much per round trip."
        ),
    )
    memory_release_seconds: float = Field(
        default=0.5,
        ge=0,
        description=(
            "While uploads run, free C-heap pages are handed back to the system this often "
            "(malloc_trim; bounds the peak RSS); 0: only when the last upload ends."
        ),
    )
    max_upload_bytes: int = Field(
        default=2048 * MiB,
        ge=1,
        description="Largest CSV accepted (RESOURCE_EXHAUSTED / UPLOAD_TOO_LARGE above it).",
    )
    max_columns: int = Field(
        default=1000, ge=1, description="Most columns a CSV may have (TOO_MANY_COLUMNS above it)."
    )
    max_field_bytes: int = Field(
        default=1 * MiB, ge=1, description="Longest single field, in bytes (FIELD_TOO_LARGE)."
    )
    max_row_bytes: int = Field(
        default=1 * MiB,
        ge=64 * 1024,
        description=(
            "Rows longer than about this many bytes are refused (ROW_TOO_LARGE); it is also the "
            "CSV reader's block size, so it bounds the memory one upload needs."
        ),
    )
    max_column_name_chars: int = Field(
        default=512, ge=1, description="Longest column name (COLUMN_NAME_TOO_LONG)."
    )
    exact_distinct_limit: int = Field(
        default=100_000,
        ge=100,
        description=(
            "Distinct values tracked exactly per column; above it distinct counts are "
            "HyperLogLog estimates (distinct_count_estimated) and top values approximate."
        ),
    )
    top_values: int = Field(default=10, ge=1, description="Top values kept in a column profile.")
    row_group_rows: int = Field(
        default=65_536, ge=1024, description="Rows per Parquet row group of the typed copy."
    )
    max_concurrent_uploads: int = Field(
        default=2, ge=1, description="Uploads processed at once; more wait their turn."
    )
    upload_idle_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "An upload holding a slot whose client sends nothing for this long is refused "
            "(UPLOAD_TOO_SLOW); also the grace period before the minimum rate applies."
        ),
    )
    upload_min_bytes_per_second: int = Field(
        default=16 * 1024,
        ge=0,
        description=(
            "Slowest client accepted while holding an upload slot, averaged over the time spent "
            "waiting for the client (the service's own back-pressure does not count); 0: any."
        ),
    )
    parquet_access_seconds: int = Field(
        default=900,
        ge=60,
        le=7 * 24 * 3600,
        description=(
            "Lifetime of the presigned URL GetParquetAccess gives out on the S3 blob store "
            "(distributed training reads the Parquet copy within it)."
        ),
    )
    read_message_bytes: int = Field(
        default=8 * MiB,
        ge=1 * MiB,
        le=48 * MiB,
        description="ReadDataset splits record batches so that one response stays under this.",
    )
    read_cache_bytes: int = Field(
        default=2048 * MiB,
        ge=0,
        description=(
            "With the S3 store: local copies of Parquet files kept for ReadDataset "
            "(written at ingest, fetched on a miss), least recently used first out. 0: none."
        ),
    )
    upload_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "An upload not heard of for this long (its process died) is marked FAILED "
            "(INGEST_INTERRUPTED) and its files removed."
        ),
    )
    janitor_interval_seconds: float = Field(
        default=20.0, gt=0, description="How often leases are renewed and stale uploads swept."
    )

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.state_dir / 'dataset.db').resolve()}"

    def resolved_blob_dir(self) -> Path:
        return (self.blob_dir or self.state_dir / "blobs").resolve()

    def read_cache_dir(self) -> Path:
        return (self.state_dir / "parquet-cache").resolve()
