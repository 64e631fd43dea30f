"""Configured limits refuse uploads with RESOURCE_EXHAUSTED or INVALID_ARGUMENT and a reason,
whatever the format the table comes in."""

from __future__ import annotations

import gzip
import io
from collections.abc import AsyncIterator
from typing import Any

import grpc
import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from modelyard.dataset.v1 import dataset_pb2
from tests.dataset.dataset_support import RunningService, start_in_process, stop_in_process

State = dataset_pb2.Dataset.State
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
async def limited(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningService]:
    tmp = tmp_path_factory.mktemp("dataset-limits")
    running = await start_in_process(
        tmp,
        None,
        database_url=f"sqlite:///{tmp / 'd.db'}",
        max_upload_bytes=64 * 1024,
        max_columns=5,
        max_field_bytes=100,
        max_column_name_chars=10,
    )
    yield running
    await stop_in_process(running)


def parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def workbook(rows: list[list[Any]]) -> bytes:
    book = openpyxl.Workbook()
    for row in rows:
        book.active.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


ROWS = b"a,b\n" + b"1,2\n" * 200_000  # 800 KB of text, a few KB compressed


@pytest.mark.parametrize(
    ("data", "code", "reason"),
    [
        (b"a,b\n" + b"1,2\n" * 20_000, EXHAUSTED, "UPLOAD_TOO_LARGE"),
        (gzip.compress(ROWS), EXHAUSTED, "UPLOAD_TOO_LARGE"),  # a bomb: small, decompresses far
        (zstandard.compress(ROWS), EXHAUSTED, "UPLOAD_TOO_LARGE"),
        (workbook([["a", "b"]] + [[1, 2]] * 5_000), EXHAUSTED, "UPLOAD_TOO_LARGE"),
        (workbook([list("abcdef"), [1, 2, 3, 4, 5, 6]]), EXHAUSTED, "TOO_MANY_COLUMNS"),
        (workbook([["a", "b"], [1, "y" * 101]]), EXHAUSTED, "FIELD_TOO_LARGE"),
        (parquet(pa.table({c: [1] for c in "abcdef"})), EXHAUSTED, "TOO_MANY_COLUMNS"),
        (parquet(pa.table({"a": [1], "b": ["y" * 101]})), EXHAUSTED, "FIELD_TOO_LARGE"),
        (
            parquet(pa.table({"a_long_column_name": [1]})),
            grpc.StatusCode.INVALID_ARGUMENT,
            "COLUMN_NAME_TOO_LONG",
        ),
        (b"a,b,c,d,e,f\n1,2,3,4,5,6\n", EXHAUSTED, "TOO_MANY_COLUMNS"),
        (b"a,b\n1," + b"y" * 101 + b"\n", EXHAUSTED, "FIELD_TOO_LARGE"),
        (b"a_long_column_name,b\n1,2\n", grpc.StatusCode.INVALID_ARGUMENT, "COLUMN_NAME_TOO_LONG"),
    ],
)
async def test_limit_refusals(
    limited: RunningService, data: bytes, code: grpc.StatusCode, reason: str
) -> None:
    failure = await limited.client.upload_failure(data, chunk_bytes=4096)
    assert (failure.code, failure.reason) == (code, reason)
    dataset = await limited.client.get(failure.metadata["dataset_id"])
    assert dataset.state == State.FAILED
    assert limited.blob_keys(dataset.dataset_id) == []


async def test_within_limits_is_accepted(limited: RunningService) -> None:
    dataset = await limited.client.upload(b"a,b,c,d,e\n1,2,3,4," + b"z" * 100 + b"\n")
    assert dataset.state == State.READY
