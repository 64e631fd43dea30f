"""DownloadDataset's formats: the original file, or the rows as CSV or Parquet whatever
the upload was (a scoring job's Parquet output read in a spreadsheet, a CSV fed to pandas)."""

from __future__ import annotations

import datetime as dt
import gzip
import io

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from modelyard.dataset.v1 import dataset_service_pb2
from tests.dataset.dataset_support import MiB, RunningService, failure_of, type_names

Format = dataset_service_pb2.DownloadDatasetRequest.Format

TYPED = pa.table(
    {
        "id": pa.array([1, 2, 3], pa.int64()),
        "amount": pa.array([1.5, None, -2.25], pa.float64()),
        "note": pa.array(["plain", 'with, comma and "quote"', None], pa.string()),
        "active": pa.array([True, None, False], pa.bool_()),
        "opened": pa.array([dt.date(2024, 1, 2), dt.date(1999, 12, 31), None], pa.date32()),
        "seen": pa.array(
            [dt.datetime(2024, 1, 2, 3, 4, 5), None, dt.datetime(2024, 1, 2, 3, 4, 5, 250000)],
            pa.timestamp("us"),
        ),
        "seen_utc": pa.array(
            [dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC), None, None],
            pa.timestamp("us", tz="UTC"),
        ),
    }
)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def parse_csv(body: bytes, schema: pa.Schema) -> pa.Table:
    """The CSV as the stored types, an unquoted empty field read as missing."""
    options = pacsv.ConvertOptions(
        column_types=schema,
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    return pacsv.read_csv(io.BytesIO(body), convert_options=options)


async def test_a_parquet_upload_downloads_as_csv_equal_to_its_table(
    service: RunningService,
) -> None:
    dataset = await service.client.upload(parquet_bytes(TYPED), display_name="download-csv")

    body, content_types = await service.client.download(dataset.dataset_id, Format.CSV)

    assert content_types == {"text/csv"}
    assert parse_csv(body, TYPED.schema).equals(TYPED)
    lines = body.decode().splitlines()
    assert lines[0] == '"id","amount","note","active","opened","seen","seen_utc"'
    # ISO 8601 dates and times; a missing value is an empty field.
    assert lines[1] == (
        '1,1.5,"plain",true,2024-01-02,"2024-01-02T03:04:05.000000","2024-06-01T12:00:00.000000Z"'
    )
    assert lines[2] == '2,,"with, comma and ""quote""",,1999-12-31,,'
    assert len(lines) == 4


async def test_a_large_csv_download_comes_in_bounded_chunks_with_one_header(
    service: RunningService,
) -> None:
    rows = 120_000
    rng = np.random.default_rng(7)
    table = pa.table(
        {
            "key": pa.array([f"row-{index:07d}" for index in range(rows)]),
            "value": pa.array(rng.normal(0.0, 1.0, rows)),
            "day": pa.array(
                [dt.date(2020, 1, 1) + dt.timedelta(days=index % 1000) for index in range(rows)],
                pa.date32(),
            ),
        }
    )
    dataset = await service.client.upload(parquet_bytes(table), display_name="download-large")

    body, _, sizes = await service.client.download_chunks(dataset.dataset_id, Format.CSV)

    assert len(body) > 3 * MiB  # so several messages
    assert max(sizes) <= MiB
    assert len(sizes) == -(-len(body) // MiB)  # every message but the last one is full
    assert body.count(b'"key","value","day"') == 1
    assert parse_csv(body, table.schema).equals(table)


async def test_a_csv_upload_downloads_as_parquet_with_its_profiled_rows_and_types(
    service: RunningService,
) -> None:
    data = (
        b"city,visitors,rating,open,opened,checked\n"
        b"Oslo,709037,4.5,true,2019-07-15,2024-01-02 03:04:05\n"
        b"Porto,231800,,false,2022-01-01,2024-01-03 10:00:00\n"
        b"Bergen,,3.25,true,,2024-01-04 23:59:59\n"
    )
    dataset = await service.client.upload(data, display_name="download-parquet")

    body, content_types = await service.client.download(dataset.dataset_id, Format.PARQUET)

    assert content_types == {"application/vnd.apache.parquet"}
    table = pq.read_table(io.BytesIO(body))
    assert table.num_rows == dataset.row_count == 3
    assert type_names(dataset) == {
        "city": "STRING",
        "visitors": "INTEGER",
        "rating": "FLOAT",
        "open": "BOOLEAN",
        "opened": "DATE",
        "checked": "TIMESTAMP",
    }
    assert table.schema.types == [
        pa.string(),
        pa.int64(),
        pa.float64(),
        pa.bool_(),
        pa.date32(),
        pa.timestamp("us"),
    ]
    assert table.column("visitors").to_pylist() == [709037, 231800, None]
    assert table.column("opened").to_pylist() == [dt.date(2019, 7, 15), dt.date(2022, 1, 1), None]
    stored, _ = await service.client.read(dataset.dataset_id)
    assert table.equals(stored)


async def test_original_is_the_default_and_gives_the_uploaded_bytes(
    service: RunningService,
) -> None:
    compressed = gzip.compress(b"a,b\n1,x\n2,y\n")
    dataset = await service.client.upload(compressed, display_name="download-original")

    default = await service.client.download(dataset.dataset_id)
    original = await service.client.download(dataset.dataset_id, Format.ORIGINAL)
    as_csv, _ = await service.client.download(dataset.dataset_id, Format.CSV)

    assert default == original == (compressed, {"application/gzip"})
    assert as_csv == b'"a","b"\n1,"x"\n2,"y"\n'


async def test_an_unknown_format_is_refused_with_a_reason(service: RunningService) -> None:
    dataset = await service.client.upload(b"a,b\n1,2\n", display_name="download-bad-format")

    failure = await failure_of(service.client.download(dataset.dataset_id, 9))

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "DOWNLOAD_FORMAT_INVALID"
    assert failure.metadata == {"format": "9"}
    assert "ORIGINAL, CSV, PARQUET" in failure.message
    body, _ = await service.client.download(dataset.dataset_id)
    assert body == b"a,b\n1,2\n"  # the dataset is still there, unchanged
