"""Hostile and broken CSVs against the real `python -m services.dataset` process.

Each case either is refused with its stable reason code (and leaves a FAILED
dataset with no files), or is accepted with the schema a user would expect.
After every case the process still serves, and a dataset uploaded before the
corpus is intact: same state, same rows, same bytes.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import random
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from devstack.components import S3Server
from devstack.stack import grpc_serving
from modelyard.dataset.v1 import dataset_pb2
from tests.dataset.dataset_support import (
    DatasetClient,
    MiB,
    RunningService,
    column,
    s3_keys,
    sha256_of,
    start_process,
    type_names,
)

pytestmark = pytest.mark.slow
State = dataset_pb2.Dataset.State
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED

Content = Callable[[Path], bytes | Path]
Check = Callable[[dataset_pb2.Dataset], None]


@dataclass(frozen=True)
class Case:
    name: str
    content: Content
    reason: str | None = None  # expected refusal, or None when the file is accepted
    code: grpc.StatusCode = INVALID
    check: Check | None = None
    options: dict[str, Any] = field(default_factory=dict)


def text(data: bytes) -> Content:
    return lambda _tmp: data


def ten_thousand_columns(tmp: Path) -> Path:
    path = tmp / "wide.csv"
    names = ",".join(f"c{index}" for index in range(10_000))
    values = ",".join(str(index) for index in range(10_000))
    path.write_text(f"{names}\n{values}\n{values}\n")
    return path


def one_huge_field(tmp: Path) -> Path:
    path = tmp / "huge-field.csv"
    with path.open("wb") as handle:
        handle.write(b"id,text\n1,")
        block = b"x" * MiB
        for _ in range(100):
            handle.write(block)
        handle.write(b"\n2,short\n")
    return path


def unclosed_quote(tmp: Path) -> Path:
    path = tmp / "unclosed.csv"
    with path.open("wb") as handle:
        handle.write(b'id,text\n1,fine\n2,"opened and never closed\n')
        handle.write(b"3,more\n" * 600_000)
    return path


def very_long_row(tmp: Path) -> bytes:
    names = ",".join(f"c{index}" for index in range(500))
    values = ",".join("v" * 8000 for _ in range(500))
    return f"{names}\n{values}\n".encode()


def truncated_parquet(_tmp: Path) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"a": list(range(10_000)), "b": ["x"] * 10_000}), sink)
    return sink.getvalue()[: sink.tell() // 2]


def nested_parquet(_tmp: Path) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"id": [1, 2], "tags": [["a", "b"], ["c"]]}), sink)
    return sink.getvalue()


def gzip_bomb(_tmp: Path) -> bytes:
    """1 GiB of zeros in 64 gzip members of 16 MiB each: about 1 MB to upload."""
    member = gzip.compress(bytes(16 * MiB), compresslevel=9)
    return member * 64


def truncated_gzip(_tmp: Path) -> bytes:
    return gzip.compress(b"a,b\n" + b"1,2\n" * 50_000)[:-64]


def xlsx_with_formulas_and_merged_cells(_tmp: Path) -> bytes:
    """A workbook as people make them: a merged title over two columns, formulas (one
    with the value Excel saved, one without), an error value, a blank row."""
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["price", "quantity", "total"])
    sheet.merge_cells("A1:B1")  # the header "price" spans two columns: B1 is empty
    sheet.append([2.5, 4, "=A2*B2"])
    sheet.append([1.25, 2, "=A3*B3"])
    sheet.append([])
    sheet.append([3.0, 1, "=1/0"])
    buffer = io.BytesIO()
    book.save(buffer)
    # openpyxl saves formulas without values; add the value Excel would have cached
    # for the first one, as a file saved by Excel has.
    return _with_cached_value(buffer.getvalue(), "C2", "10")


def _with_cached_value(data: bytes, cell: str, value: str) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            content = source.read(info.filename)
            if info.filename == "xl/worksheets/sheet1.xml":
                text = content.decode()
                start = text.index(f'<c r="{cell}"')
                empty = text.index("<v />", start)
                text = text[:empty] + f"<v>{value}</v>" + text[empty + len("<v />") :]
                content = text.encode()
            target.writestr(info, content)
    return out.getvalue()


def corrupt_xlsx(_tmp: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", "<workbook><sheets><sheet name=")
    return buffer.getvalue()


def xlsx_values(dataset: dataset_pb2.Dataset) -> None:
    assert [item.name for item in dataset.columns] == ["price", "unnamed_1", "total"]
    assert [r.new_name for r in dataset.header_repairs] == ["unnamed_1"]
    assert type_names(dataset)["total"] == "INTEGER"  # 10, then missing values
    assert column(dataset, "total").profile.null_count == 2
    assert dataset.row_count == 3  # the blank row is skipped


def zip_of_a_csv(_tmp: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data.csv", "a,b\n1,2\n")
    return buffer.getvalue()


def trailing_column_filled_late(_tmp: Path) -> bytes:
    rows = b"".join(b"%d,\n" % index for index in range(100_000))
    return b"a,\n" + rows + b"7,late note\n"


def xlsx_workbook(_tmp: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    return buffer.getvalue()


def late_type_change(_tmp: Path) -> bytes:
    rows = b"".join(b"%d,%d\n" % (index, index) for index in range(200_000))
    return b"measure,code\n" + rows + b"1.25,X-9\n"


def html_error_page(_tmp: Path) -> bytes:
    return (
        b"<!DOCTYPE html>\n<html>\n<head><title>404 Not Found</title></head>\n"
        b"<body><h1>Not Found</h1><p>The file, it seems, was moved.</p></body>\n</html>\n"
    )


def types_are(expected: dict[str, str]) -> Check:
    def check(dataset: dataset_pb2.Dataset) -> None:
        assert type_names(dataset) == expected

    return check


def repaired(expected: list[tuple[int, str, str, str]]) -> Check:
    def check(dataset: dataset_pb2.Dataset) -> None:
        assert [
            (
                item.column_index,
                item.original_name,
                item.new_name,
                dataset_pb2.HeaderRepair.Reason.Name(item.reason),
            )
            for item in dataset.header_repairs
        ] == expected

    return check


def checks(*all_checks: Check) -> Check:
    def check(dataset: dataset_pb2.Dataset) -> None:
        for one in all_checks:
            one(dataset)

    return check


def rows(count: int) -> Check:
    def check(dataset: dataset_pb2.Dataset) -> None:
        assert dataset.row_count == count

    return check


def top_value(name: str, value: str) -> Check:
    def check(dataset: dataset_pb2.Dataset) -> None:
        assert value in [item.value for item in column(dataset, name).profile.top_values]

    return check


CASES = [
    Case("empty file", text(b""), "EMPTY_FILE"),
    Case("only blank lines", text(b"\n\n\r\n\n"), "EMPTY_FILE"),
    Case("only a UTF-8 BOM", text(b"\xef\xbb\xbf"), "EMPTY_FILE"),
    Case("header only", text(b"a,b,c\n"), "HEADER_ONLY"),
    Case("header only, CRLF and blank lines", text(b"a,b\r\n\r\n\r\n"), "HEADER_ONLY"),
    Case("ragged: a short row", text(b"a,b,c\n1,2,3\n4,5\n6,7,8\n"), "RAGGED_ROWS"),
    Case("ragged: a long row", text(b"a,b\n1,2\n3,4,5\n"), "RAGGED_ROWS"),
    Case("binary garbage", lambda _tmp: random.Random(7).randbytes(300_000), "BINARY_CONTENT"),
    Case("a NUL byte in text", text(b"a,b\n1,x\x00y\n"), "BINARY_CONTENT"),
    Case("a zip that is not a workbook", zip_of_a_csv, "COMPRESSED_CONTENT"),
    Case("a truncated Parquet file", truncated_parquet, "PARQUET_INVALID"),
    Case("Parquet with a list column", nested_parquet, "COLUMN_TYPE_UNSUPPORTED"),
    Case("a gzip bomb of zeros", gzip_bomb, "BINARY_CONTENT"),
    Case("a truncated gzip file", truncated_gzip, "COMPRESSION_INVALID"),
    Case(
        "gzip of a gzip file",
        lambda _tmp: gzip.compress(gzip.compress(b"a\n1\n")),
        "COMPRESSED_CONTENT",
    ),
    Case("a workbook that is not valid XML", corrupt_xlsx, "XLSX_INVALID"),
    Case(
        "XLSX with formulas, merged cells and an error value",
        xlsx_with_formulas_and_merged_cells,
        check=xlsx_values,
    ),
    Case("a zip with a workbook's name but no workbook", xlsx_workbook, "COMPRESSED_CONTENT"),
    Case(
        "old Excel .xls",
        text(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 512),
        "BINARY_CONTENT",
    ),
    Case("UTF-32 text", text("name,age\nZoë,31\n".encode("utf-32")), "ENCODING_UNSUPPORTED"),
    Case(
        "Latin-1 text",
        text("city,population\nZürich,421878\nMálaga,578460\nCafé,1\n".encode("latin-1")),
        check=checks(
            types_are({"city": "STRING", "population": "INTEGER"}), top_value("city", "Zürich")
        ),
    ),
    Case(
        "Windows-1252 quotes and euro",
        text("item,price\n\u201cdeluxe\u201d,12\n\u20ac coin,1\n".encode("cp1252")),
        check=top_value("item", "\u201cdeluxe\u201d"),
    ),
    Case(
        "Windows-1252 in the header only",
        text("pr\u00e9nom,\u00e2ge\nanna,31\nbo,42\n".encode("cp1252")),
        check=types_are({"pr\u00e9nom": "STRING", "\u00e2ge": "INTEGER"}),
    ),
    Case(
        "UTF-8 BOM",
        text(b"\xef\xbb\xbfid,name\n1,a\n2,b\n"),
        check=types_are({"id": "INTEGER", "name": "STRING"}),
    ),
    Case(
        "duplicate column names",
        text(b"a,b,a\n1,2,3\n"),
        check=checks(
            types_are({"a": "INTEGER", "b": "INTEGER", "a_2": "INTEGER"}),
            repaired([(3, "a", "a_2", "REASON_DUPLICATE_NAME")]),
        ),
    ),
    Case(
        "blank column name",
        text(b"a,,c\n1,2,3\n"),
        check=repaired([(2, "", "unnamed_1", "REASON_BLANK_NAME")]),
    ),
    Case(
        "whitespace column name",
        text(b"a, ,c\n1,2,3\n"),
        check=repaired([(2, " ", "unnamed_1", "REASON_BLANK_NAME")]),
    ),
    Case(
        "trailing delimiter on every line",
        text(b"a,b,\n1,2,\n3,4,\n"),
        check=checks(
            types_are({"a": "INTEGER", "b": "INTEGER"}),
            repaired([(3, "", "", "REASON_EMPTY_TRAILING_COLUMN")]),
        ),
    ),
    Case(
        "trailing delimiter, and a value in the last column far down",
        trailing_column_filled_late,
        check=checks(
            types_are({"a": "INTEGER", "unnamed_1": "STRING"}),
            repaired([(2, "", "unnamed_1", "REASON_BLANK_NAME")]),
        ),
    ),
    Case("column name of 600 characters", text(b"x" * 600 + b",b\n1,2\n"), "COLUMN_NAME_TOO_LONG"),
    Case("10,000 columns", ten_thousand_columns, "TOO_MANY_COLUMNS", EXHAUSTED),
    Case("one 100 MB field", one_huge_field, "FIELD_TOO_LARGE", EXHAUSTED),
    Case("a 4 MB row of normal fields", very_long_row, "ROW_TOO_LARGE", EXHAUSTED),
    Case("a quote never closed", unclosed_quote, "ROW_TOO_LARGE", EXHAUSTED),
    Case("HTML error page saved as .csv", html_error_page, "RAGGED_ROWS"),
    Case(
        "quoted newlines",
        text(b'id,comment\n1,"first line\nsecond line"\n2,"a ""quoted"" word"\n'),
        check=checks(rows(2), top_value("comment", "first line\nsecond line")),
    ),
    Case(
        "mixed types in a column",
        text(b"code,n\n1,1\n2,2\nA7,3\n4.5,4\n"),
        check=types_are({"code": "STRING", "n": "INTEGER"}),
    ),
    Case(
        "a column that is all null",
        text(b"a,empty,b\n1,,x\n2,NA,y\n3,,z\n"),
        check=checks(
            types_are({"a": "INTEGER", "empty": "ALL_NULL", "b": "STRING"}),
            lambda dataset: _null_count(dataset, "empty", 3),
        ),
    ),
    Case(
        "CRLF line ends",
        text(b"a,b\r\n1,x\r\n2,y\r\n"),
        check=checks(rows(2), top_value("b", "x"), types_are({"a": "INTEGER", "b": "STRING"})),
    ),
    Case("old Mac CR line ends", text(b"a,b\r1,x\r2,y\r"), check=rows(2)),
    Case(
        "integers with missing values",
        text(b"n,tag\n1,a\n,b\n3,c\nNA,d\n5,e\n"),
        check=checks(
            types_are({"n": "INTEGER", "tag": "STRING"}),
            lambda dataset: _null_count(dataset, "n", 2),
        ),
    ),
    Case(
        "booleans, dates and timestamps",
        text(
            b"flag,day,at\n"
            b"true,2024-02-29,2024-02-29 23:59:59\n"
            b"FALSE,2023-01-01,2023-01-01T00:00:00\n"
        ),
        check=types_are({"flag": "BOOLEAN", "day": "DATE", "at": "TIMESTAMP"}),
    ),
    Case(
        "a type that changes after 200,000 rows",
        late_type_change,
        check=checks(rows(200_001), types_are({"measure": "FLOAT", "code": "STRING"})),
    ),
    Case(
        "integers beyond 64 bits",
        text(b"big\n1\n123456789012345678901234567890\n"),
        check=types_are({"big": "FLOAT"}),
    ),
    Case(
        "semicolons, delimiter not given",
        text(b"a;b;c\n1;2;3\n"),
        check=types_are({"a": "INTEGER", "b": "INTEGER", "c": "INTEGER"}),
    ),
    Case(
        "one column with commas inside quotes, delimiter not given",
        text(b'label\n"a, b"\n"c, d"\n'),
        check=types_are({"label": "STRING"}),
    ),
    Case(
        "no trailing newline",
        text(b"a,b\n1,2\n3,4"),
        check=rows(2),
    ),
    Case(
        "header names with quotes and delimiters",
        text(b'"last, first","say ""hi"""\nx,y\n'),
        check=types_are({"last, first": "STRING", 'say "hi"': "STRING"}),
    ),
    Case(
        "tab-separated with the tab option",
        text(b"a\tb\n1\t2\n"),
        check=types_are({"a": "INTEGER", "b": "INTEGER"}),
        options={"delimiter": "\t"},
    ),
    Case(
        "delimiter of two characters",
        text(b"a,b\n1,2\n"),
        "DELIMITER_INVALID",
        options={"delimiter": "::"},
    ),
    Case(
        "a quote as delimiter", text(b"a,b\n1,2\n"), "DELIMITER_INVALID", options={"delimiter": '"'}
    ),
    Case(
        "blank display name",
        text(b"a\n1\n"),
        "DISPLAY_NAME_INVALID",
        options={"display_name": "  "},
    ),
    Case(
        "display name of 201 characters",
        text(b"a\n1\n"),
        "DISPLAY_NAME_INVALID",
        options={"display_name": "n" * 201},
    ),
]


def _null_count(dataset: dataset_pb2.Dataset, name: str, count: int) -> None:
    assert column(dataset, name).profile.null_count == count


@dataclass
class Corpus:
    service: RunningService
    canary: dataset_pb2.Dataset
    canary_bytes: bytes


@pytest.fixture(scope="module")
async def corpus(
    tmp_path_factory: pytest.TempPathFactory,
    s3_server: S3Server,
    database_url_factory: Callable[[str], str],
) -> AsyncIterator[Corpus]:
    tmp = tmp_path_factory.mktemp("dataset-corpus")
    url = await asyncio.to_thread(database_url_factory, "modelyard_dataset_corpus")
    process, settings = await asyncio.to_thread(start_process, tmp, s3_server, url)
    client = DatasetClient(settings.listen_address)
    try:
        canary_bytes = b"x,y,label\n" + b"".join(
            b"%d,%f,%s\n" % (index, index / 7, b"ab"[index % 2 : index % 2 + 1])
            for index in range(5000)
        )
        canary = await client.upload(canary_bytes, display_name="canary")
        yield Corpus(
            RunningService(client, settings, process=process, s3=s3_server), canary, canary_bytes
        )
    finally:
        await client.close()
        await asyncio.to_thread(process.stop)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_hostile_csv(corpus: Corpus, case: Case, tmp_path: Path) -> None:
    client = corpus.service.client
    options = {"display_name": case.name} | case.options
    content = case.content(tmp_path)
    if case.reason is None:
        dataset = await client.upload(content, chunk_bytes=MiB, **options)
        assert dataset.state == State.READY
        assert dataset.sha256 == sha256_of(content)
        assert case.check is not None
        case.check(dataset)
        table, _ = await client.read(dataset.dataset_id)
        assert table.num_rows == dataset.row_count
    else:
        failure = await client.upload_failure(content, chunk_bytes=MiB, **options)
        assert (failure.code, failure.reason) == (case.code, case.reason), failure.message
        assert len(failure.message) <= 1001
        if "dataset_id" in failure.metadata:  # refused after the upload had begun
            dataset = await client.get(failure.metadata["dataset_id"])
            assert dataset.state == State.FAILED
            assert dataset.error.message == failure.message
            assert corpus.service.blob_keys(dataset.dataset_id) == []
    await assert_service_intact(corpus)


async def assert_service_intact(corpus: Corpus) -> None:
    assert corpus.service.process is not None
    assert corpus.service.process.running()
    assert await asyncio.to_thread(grpc_serving, corpus.service.settings.listen_address)
    client = corpus.service.client
    canary = await client.get(corpus.canary.dataset_id)
    assert canary == corpus.canary
    table, _ = await client.read(canary.dataset_id, columns=["label"])
    assert table.num_rows == 5000
    body, _ = await client.download(canary.dataset_id)
    assert body == corpus.canary_bytes


async def test_only_ready_datasets_keep_files(corpus: Corpus) -> None:
    """After the whole corpus, the bucket holds the files of READY datasets and nothing else."""
    listed = await corpus.service.client.list(page_size=1000)
    ready = {item.dataset_id for item in listed.datasets if item.state == State.READY}
    assert corpus.service.s3 is not None
    keys = s3_keys(corpus.service.s3, corpus.service.settings.s3_bucket, "")
    owners = {key.removeprefix("(multipart) ").split("/")[1] for key in keys}
    assert owners == ready
    assert not [key for key in keys if key.startswith("(multipart)")]
    for dataset_id in ready:
        names = {key.split("/", 2)[2] for key in keys if key.split("/")[1] == dataset_id}
        blobs = {name for name in names if ".segments/" not in name}
        assert "data.parquet" in blobs
        assert len(blobs) == 2, names  # the Parquet copy and one original
        # Every segment belongs to one of them (none left over from a failed write).
        assert {name.split(".segments/")[0] for name in names - blobs} <= blobs
