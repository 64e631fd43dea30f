"""Dataset rows → `modelyard.dataset.v1.Dataset` messages, and the errors recorded on them."""

from __future__ import annotations

from typing import cast

import grpc

from modelyard.dataset.v1 import dataset_pb2
from runtime.access import DEFAULT_PROJECT
from runtime.errors import code_from_number, make_status
from services.dataset.models import DatasetRecord
from services.dataset.repository import as_utc

State = dataset_pb2.Dataset.State
MAX_ERROR_MESSAGE_CHARS = 1000


def limited(message: str) -> str:
    return (
        message
        if len(message) <= MAX_ERROR_MESSAGE_CHARS
        else message[:MAX_ERROR_MESSAGE_CHARS] + "…"
    )


def stored_details(
    columns: list[dataset_pb2.Column],
    repairs: list[dataset_pb2.HeaderRepair],
    source_format: dataset_pb2.SourceFormat,
) -> bytes:
    """What the row keeps of a READY dataset beyond its plain fields, serialized."""
    return dataset_pb2.Dataset(
        columns=columns, header_repairs=repairs, source_format=source_format
    ).SerializeToString()


def to_message(record: DatasetRecord) -> dataset_pb2.Dataset:
    dataset = dataset_pb2.Dataset(
        dataset_id=record.dataset_id,
        display_name=record.display_name,
        state=cast(dataset_pb2.Dataset.State, State.Value(record.state)),
        csv_options=dataset_pb2.CsvOptions(
            delimiter=record.delimiter, has_header=record.has_header
        ),
        row_count=record.row_count,
        size_bytes=record.size_bytes,
        sha256=record.sha256,
        request_id=record.request_id or "",
        version=record.version or 0,
        project_id=record.project or DEFAULT_PROJECT,
    )
    if record.columns:
        stored = dataset_pb2.Dataset.FromString(record.columns)
        dataset.columns.extend(stored.columns)
        dataset.header_repairs.extend(stored.header_repairs)
        if stored.HasField("source_format"):
            dataset.source_format.CopyFrom(stored.source_format)
    if record.error_reason:
        dataset.error.CopyFrom(
            make_status(
                code_from_number(record.error_code or grpc.StatusCode.UNKNOWN.value[0]),
                record.error_reason,
                record.error_message or "",
                {"dataset_id": record.dataset_id},
            )
        )
    dataset.create_time.FromDatetime(as_utc(record.create_time))
    dataset.update_time.FromDatetime(as_utc(record.update_time))
    return dataset
