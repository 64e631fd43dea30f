"""The rules that turn people's files into columns: header repair, delimiter, dates."""

from __future__ import annotations

import datetime

import pyarrow as pa
import pytest

from modelyard.dataset.v1 import dataset_pb2
from services.dataset import dates
from services.dataset.headers import HeaderLimits, detect_delimiter, repair_header

Reason = dataset_pb2.HeaderRepair.Reason
LIMITS = HeaderLimits(max_columns=100, max_column_name_chars=50)


def repairs(names: list[str]) -> tuple[list[str], list[tuple[int, str, str, str]]]:
    header = repair_header(names, True, LIMITS)
    return header.names, [
        (item.column_index, item.original_name, item.new_name, Reason.Name(item.reason))
        for item in header.repairs
    ]


def test_a_blank_name_gets_a_generated_one_unique_against_the_others() -> None:
    assert repairs(["", "a", "unnamed_0"]) == (
        ["unnamed_0_2", "a", "unnamed_0"],
        [(1, "", "unnamed_0_2", "REASON_BLANK_NAME")],
    )


def test_repeated_names_get_suffixes_that_no_other_column_has() -> None:
    assert repairs(["a", "a", "a_2", "a", " "]) == (
        ["a", "a_3", "a_2", "a_4", "unnamed_4"],
        [
            (2, "a", "a_3", "REASON_DUPLICATE_NAME"),
            (4, "a", "a_4", "REASON_DUPLICATE_NAME"),
            (5, " ", "unnamed_4", "REASON_BLANK_NAME"),
        ],
    )


def test_a_trailing_blank_column_can_be_dropped_with_its_repair_recorded() -> None:
    header = repair_header(["a", "b", ""], True, LIMITS)
    assert header.trailing_blank == 2
    dropped = header.drop_trailing()
    assert dropped.names == ["a", "b"]
    assert [(r.column_index, r.new_name, Reason.Name(r.reason)) for r in dropped.repairs] == [
        (3, "", "REASON_EMPTY_TRAILING_COLUMN")
    ]


def test_without_a_header_columns_are_numbered() -> None:
    assert repair_header(["a", "a"], False, LIMITS).names == ["column_1", "column_2"]


@pytest.mark.parametrize(
    ("text", "delimiter"),
    [
        (b"a,b,c\n1,2,3\n", ","),
        (b"a\tb\tc\n1\t2\t3\n", "\t"),
        (b"a;b;c\n1,5;2,5;3\n", ";"),  # decimal commas: the semicolons are the delimiter
        (b"name,desc\nx,a;b;c\ny,d\n", ","),  # semicolons inside a column's text
        (b'a|b\n"x|y"|2\n', "|"),
        (b"one column\nvalue\n", ","),
        (b'"a,b";c\n"1,2";3\n', ";"),
    ],
)
def test_the_delimiter_is_the_one_giving_every_line_as_many_fields(
    text: bytes, delimiter: str
) -> None:
    assert detect_delimiter(text, "utf8") == delimiter


@pytest.mark.parametrize(
    ("values", "strftime", "first"),
    [
        (["25/03/2024", "01/02/2024"], "%d/%m/%Y", datetime.date(2024, 3, 25)),
        (["03/25/2024", "01/02/2024"], "%m/%d/%Y", datetime.date(2024, 3, 25)),
        (["01/02/2024", "03/04/2024"], "%d/%m/%Y", datetime.date(2024, 2, 1)),  # no evidence
        (["1.2.2024", "31.12.2023"], "%d.%m.%Y", datetime.date(2024, 2, 1)),
        (
            ["3/25/2024 14:30", "1/2/2024 0:05"],
            "%m/%d/%Y %H:%M",
            datetime.datetime(2024, 3, 25, 14, 30),
        ),
        (
            ["25-03-2024 14:30:15", None],
            "%d-%m-%Y %H:%M:%S",
            datetime.datetime(2024, 3, 25, 14, 30, 15),
        ),
    ],
)
def test_dates_written_day_or_month_first_are_told_by_evidence(
    values: list[str | None], strftime: str, first: object
) -> None:
    pattern = dates.detect(pa.array(values, pa.string()))
    assert pattern is not None
    assert pattern.strftime == strftime
    parsed = dates.parse(pa.array(values, pa.string()), pattern)
    assert parsed[0].as_py() == first
    assert parsed.null_count == values.count(None)


@pytest.mark.parametrize(
    "values",
    [
        ["25/03/2024", "03/25/2024"],  # evidence for both orders
        ["31/02/2024"],  # no such day
        ["29/02/2023"],  # not a leap year
        ["25/03/2024", "2024-03-26"],  # two patterns
        ["25/03/2024", "25/03/2024 10:00"],  # with and without a time
        ["12/2024"],
        ["1/2/3"],
        ["25/03/2024 24:00"],
    ],
)
def test_text_that_is_not_one_date_pattern_stays_text(values: list[str]) -> None:
    assert dates.detect(pa.array(values, pa.string())) is None


def test_a_leap_day_is_a_date() -> None:
    pattern = dates.detect(pa.array(["29/02/2024"], pa.string()))
    assert pattern is not None
    assert dates.parse(pa.array(["29/02/2024"]), pattern)[0].as_py() == datetime.date(2024, 2, 29)
