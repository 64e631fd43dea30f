"""The first conversion pass names every column's type from the first block, read on its own.

pyarrow's streaming CSV reader infers types from its first block only; told them,
it reads the rest for about a third less CPU. The types must be the ones it would
have inferred, and the text it then reads must be the whole text, from its start.
"""

from __future__ import annotations

import datetime

import pyarrow as pa
import pytest

from services.dataset.convert import (
    CsvBatches,
    CsvFormat,
    Limits,
    TypeConflictError,
    _complete_rows,
    _first_block_plan,
)
from services.dataset.pipe import RecordingReader
from tests.dataset.dataset_support import recording_reader

MiB = 1024 * 1024
BLOCK = 64 * 1024
LIMITS = Limits(
    max_columns=10, max_field_bytes=BLOCK, max_row_bytes=BLOCK, max_column_name_chars=100
)


def source_of(data: bytes) -> RecordingReader:
    return recording_reader(data, chunk_bytes=10_000, keep_bytes=2 * BLOCK)


def table_text(rows: int) -> bytes:
    """id, a d/m/Y date, and a note that is every seventh row a quoted two-line text."""
    lines = [b"id,day,note\n"]
    for index in range(rows):
        day = datetime.date(2020, 1, 1) + datetime.timedelta(days=index % 900)
        note = f'"line {index}\nand, more"' if index % 7 == 0 else f"plain {index}"
        lines.append(f"{index},{day:%d/%m/%Y},{note}\n".encode())
    return b"".join(lines)


@pytest.mark.parametrize(
    ("text", "complete"),
    [
        (b"a,b\n1,2\n3,4", b"a,b\n1,2\n"),
        (b"a,b\r\n1,2\r\n3,4", b"a,b\r\n1,2\r\n"),
        (b'a,b\n1,2\n3,"x\ny', b"a,b\n1,2\n"),  # the last line end is inside quotes
        (b'a,b\n1,"say ""hi""\n"\n3,4', b'a,b\n1,"say ""hi""\n"\n'),  # doubled quotes
        (b"a,b,c", None),
        (b'a,"b\n\n\n', None),
    ],
)
def test_complete_rows_end_at_the_last_line_end_outside_quotes(
    text: bytes, complete: bytes | None
) -> None:
    assert _complete_rows(text) == complete


def test_the_first_block_gives_the_types_and_the_text_is_read_again_in_full() -> None:
    data = table_text(20_000)
    assert len(data) > 8 * BLOCK
    text, first_block = _first_block_plan(source_of(data), CsvFormat(), LIMITS)
    assert first_block is not None
    names, plan = first_block
    assert names == ["id", "day", "note"]
    assert [column.read_type for column in plan.columns] == [pa.int64(), pa.string(), pa.string()]
    assert plan.columns[1].date_pattern is not None
    assert plan.columns[2].date_pattern is None
    assert b"".join(iter(lambda: text.read(BLOCK), b"")) == data


def test_a_typed_first_pass_reads_every_row_as_written() -> None:
    rows = 20_000
    with CsvBatches(source_of(table_text(rows)), CsvFormat(), LIMITS) as batches:
        table = pa.Table.from_batches(list(batches), schema=batches.schema)
    assert table.num_rows == rows
    assert table.column("id").to_pylist() == list(range(rows))
    assert table.column("day")[900].as_py() == datetime.date(2020, 1, 1)
    assert table.column("day")[31].as_py() == datetime.date(2020, 2, 1)
    assert table.column("note")[7 * 1000].as_py() == "line 7000\nand, more"
    assert table.column("note")[7 * 1000 + 1].as_py() == "plain 7001"


def test_a_value_that_does_not_fit_a_later_block_still_asks_for_a_second_pass() -> None:
    data = table_text(20_000).replace(b"\n19000,", b"\n19000.5,")
    with (
        pytest.raises(TypeConflictError) as conflict,
        CsvBatches(source_of(data), CsvFormat(), LIMITS) as batches,
    ):
        for _ in batches:
            pass
    assert conflict.value.index == 0


def test_a_small_file_is_its_own_first_block() -> None:
    data = b"x,y\n1,a\n2,b"  # no line end after the last row
    _, first_block = _first_block_plan(source_of(data), CsvFormat(), LIMITS)
    assert first_block is not None
    assert [column.read_type for column in first_block[1].columns] == [pa.int64(), pa.string()]
    with CsvBatches(source_of(data), CsvFormat(), LIMITS) as batches:
        assert sum(batch.num_rows for batch in batches) == 2
