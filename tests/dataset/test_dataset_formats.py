"""Tables as people have them, each written by the library people use to write it.

Every file goes through the real service (local files + SQLite, then S3 +
PostgreSQL) and must give the dataset its CSV twin would: same names, types
and values.
"""

from __future__ import annotations

import bz2
import datetime
import gzip
import io
from collections.abc import Callable

import openpyxl
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from modelyard.dataset.v1 import dataset_pb2
from tests.dataset.dataset_support import RunningService, column, sha256_of, type_names

pytestmark = pytest.mark.slow
State = dataset_pb2.Dataset.State
Format = dataset_pb2.SourceFormat.Format
Compression = dataset_pb2.SourceFormat.Compression

FRAME = pd.DataFrame(
    {
        "city": ["Zürich", "Málaga", "Oslo", "Porto"],
        "visitors": [421878, 578460, 709037, 231800],
        "rating": [4.5, 4.25, 3.75, 4.0],
        "coastal": [False, True, True, True],
        "opened": pd.to_datetime(["2021-03-04", "2020-12-31", "2019-07-15", "2022-01-01"]),
    }
)
EXPECTED_TYPES = {
    "city": "STRING",
    "visitors": "INTEGER",
    "rating": "FLOAT",
    "coastal": "BOOLEAN",
    "opened": "DATE",
}


def pandas_csv(**options: object) -> bytes:
    return FRAME.to_csv(index=False, **options).encode()  # type: ignore[call-overload, no-any-return]


def assert_same_table(dataset: dataset_pb2.Dataset, table: pa.Table) -> None:
    assert dataset.state == State.READY
    assert dataset.row_count == len(FRAME)
    assert type_names(dataset) == EXPECTED_TYPES
    assert table.column("city").to_pylist() == FRAME["city"].tolist()
    assert table.column("visitors").to_pylist() == FRAME["visitors"].tolist()
    assert table.column("rating").to_pylist() == FRAME["rating"].tolist()
    assert table.column("opened").to_pylist()[0] == datetime.date(2021, 3, 4)


Maker = Callable[[], bytes]
TEXT_FILES: list[tuple[str, Maker, int, str]] = [
    (
        "gzip (Python's gzip)",
        lambda: gzip.compress(pandas_csv()),
        Compression.COMPRESSION_GZIP,
        "UTF-8",
    ),
    (
        "zstd (zstandard)",
        lambda: zstandard.compress(pandas_csv()),
        Compression.COMPRESSION_ZSTD,
        "UTF-8",
    ),
    (
        "bzip2 (Python's bz2)",
        lambda: bz2.compress(pandas_csv()),
        Compression.COMPRESSION_BZIP2,
        "UTF-8",
    ),
    ("TSV (pandas, sep=tab)", lambda: pandas_csv(sep="\t"), Compression.COMPRESSION_NONE, "UTF-8"),
    (
        # What a spreadsheet's "Unicode text" export is: tab-separated UTF-16LE with a BOM.
        "UTF-16 with a BOM, tab-separated",
        lambda: FRAME.to_csv(index=False, sep="\t").encode("utf-16"),
        Compression.COMPRESSION_NONE,
        "UTF-16LE",
    ),
    (
        "gzip of UTF-16 big-endian",
        lambda: gzip.compress(b"\xfe\xff" + pandas_csv().decode().encode("utf-16-be")),
        Compression.COMPRESSION_GZIP,
        "UTF-16BE",
    ),
]


@pytest.mark.parametrize(
    ("maker", "compression", "encoding"),
    [item[1:] for item in TEXT_FILES],
    ids=[item[0] for item in TEXT_FILES],
)
async def test_text_files(
    service: RunningService, maker: Maker, compression: int, encoding: str
) -> None:
    data = maker()
    dataset = await service.client.upload(data, display_name="formats-text", chunk_bytes=1000)
    table, _ = await service.client.read(dataset.dataset_id)
    assert_same_table(dataset, table)
    assert dataset.source_format.format == Format.FORMAT_DELIMITED_TEXT
    assert dataset.source_format.compression == compression
    assert dataset.source_format.encoding == encoding
    assert dataset.size_bytes == len(data)
    assert dataset.sha256 == sha256_of(data)
    body, media_types = await service.client.download(dataset.dataset_id)
    assert body == data  # the original, as uploaded
    assert len(media_types) == 1


async def test_a_pandas_csv_with_its_index_is_accepted_and_the_index_flagged(
    service: RunningService,
) -> None:
    data = FRAME.to_csv().encode()  # pandas writes ",city,visitors,..." and 0..n-1
    dataset = await service.client.upload(data, display_name="pandas-index")
    assert dataset.state == State.READY
    assert dataset.columns[0].name == "unnamed_0"
    assert column(dataset, "unnamed_0").row_number
    assert not column(dataset, "visitors").row_number
    assert [(r.column_index, r.original_name, r.new_name) for r in dataset.header_repairs] == [
        (1, "", "unnamed_0")
    ]


async def test_an_r_write_csv_file_is_accepted_and_its_row_names_flagged(
    service: RunningService,
) -> None:
    # What R's write.csv(df) writes: quoted names and strings, row names 1..n first.
    data = (
        b'"","city","visitors","opened"\n'
        b'"1","Oslo",709037,2019-07-15\n'
        b'"2","Porto",231800,2022-01-01\n'
        b'"3","Bergen",NA,2020-05-05\n'
    )
    dataset = await service.client.upload(data, display_name="r-write-csv")
    assert type_names(dataset) == {
        "unnamed_0": "INTEGER",
        "city": "STRING",
        "visitors": "INTEGER",
        "opened": "DATE",
    }
    assert column(dataset, "unnamed_0").row_number
    assert column(dataset, "visitors").profile.null_count == 1


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


async def test_parquet_with_contract_types_is_stored_as_is(service: RunningService) -> None:
    table = pa.Table.from_pandas(FRAME, preserve_index=False)
    table = table.set_column(
        4, "opened", pa.array([value.date() for value in FRAME["opened"]], pa.date32())
    )
    data = parquet_bytes(table)
    dataset = await service.client.upload(data, display_name="formats-parquet")
    read, _ = await service.client.read(dataset.dataset_id)
    assert_same_table(dataset, read)
    assert dataset.source_format.format == Format.FORMAT_PARQUET
    assert dataset.csv_options.delimiter == ""
    assert column(dataset, "visitors").profile.numeric.max == 709037
    assert service.blobs(dataset.dataset_id) == ["data.parquet", "original.csv"]
    body, _ = await service.client.download(dataset.dataset_id)
    assert body == data


async def test_parquet_written_by_pandas_is_retyped(service: RunningService) -> None:
    frame = FRAME.assign(
        visitors=FRAME["visitors"].astype("int32"),
        rating=FRAME["rating"].astype("float32"),
        city=FRAME["city"].astype("category"),
    )
    buffer = io.BytesIO()
    frame.to_parquet(buffer)  # nanosecond timestamps, int32, float32, dictionary
    dataset = await service.client.upload(buffer.getvalue(), display_name="pandas-parquet")
    table, _ = await service.client.read(dataset.dataset_id)
    assert type_names(dataset) == EXPECTED_TYPES | {"opened": "TIMESTAMP"}
    assert table.schema.field("visitors").type == pa.int64()
    assert table.schema.field("rating").type == pa.float64()
    assert table.schema.field("city").type == pa.string()
    assert table.schema.field("opened").type == pa.timestamp("us")
    assert table.column("city").to_pylist() == FRAME["city"].tolist()


async def test_parquet_with_repeated_and_blank_names_is_repaired(
    service: RunningService,
) -> None:
    table = pa.Table.from_arrays(
        [pa.array([1, 2]), pa.array(["a", "b"]), pa.array([3.5, 4.5])], names=["x", "x", ""]
    )
    dataset = await service.client.upload(parquet_bytes(table), display_name="odd-parquet")
    assert [item.name for item in dataset.columns] == ["x", "x_2", "unnamed_2"]
    read, _ = await service.client.read(dataset.dataset_id)
    assert read.column("x_2").to_pylist() == ["a", "b"]


def workbook_bytes(book: openpyxl.Workbook) -> bytes:
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


async def test_xlsx_written_by_pandas(service: RunningService) -> None:
    buffer = io.BytesIO()
    FRAME.to_excel(buffer, index=False, sheet_name="cities")  # openpyxl underneath
    dataset = await service.client.upload(buffer.getvalue(), display_name="formats-xlsx")
    table, _ = await service.client.read(dataset.dataset_id)
    assert_same_table(dataset, table)
    assert dataset.source_format.format == Format.FORMAT_XLSX
    assert dataset.source_format.sheet == "cities"


async def test_xlsx_named_sheet_and_unknown_sheet(service: RunningService) -> None:
    book = openpyxl.Workbook()
    book.active.title = "notes"
    book.active.append(["just", "notes"])
    book.active.append(["x", "y"])
    sales = book.create_sheet("sales")
    sales.append(["region", "amount", "day"])
    sales.append(["north", 10, datetime.datetime(2024, 3, 25, 14, 30)])
    sales.append(["south", 12.5, datetime.datetime(2024, 3, 26, 9, 0)])
    data = workbook_bytes(book)

    dataset = await service.client.upload(data, display_name="sheets", sheet="sales")
    assert type_names(dataset) == {"region": "STRING", "amount": "FLOAT", "day": "TIMESTAMP"}
    assert dataset.source_format.sheet == "sales"
    first = await service.client.upload(data, display_name="sheets")
    assert [item.name for item in first.columns] == ["just", "notes"]

    failure = await service.client.upload_failure(data, display_name="sheets", sheet="Sales")
    assert failure.reason == "SHEET_NOT_FOUND"
    assert "'notes', 'sales'" in failure.message
    failure = await service.client.upload_failure(pandas_csv(), display_name="x", sheet="a")
    assert failure.reason == "SHEET_NOT_FOUND"
