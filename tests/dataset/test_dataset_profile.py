"""The profile's statistics and the content checks, against exact computations."""

from __future__ import annotations

import codecs

import numpy as np
import pyarrow as pa
import pytest

from runtime.errors import ServiceError
from services.dataset.content import (
    WINDOWS_1252,
    Compression,
    ContentInspector,
    Format,
    Sniffed,
    sniff,
)
from services.dataset.profile import (
    ColumnProfiler,
    DistinctCounter,
    HyperLogLog,
    NumericStats,
    ValueCounts,
    hash_values,
)


@pytest.mark.parametrize("count", [10, 5_000, 200_000])
def test_hyperloglog_estimates_within_three_percent(count: int) -> None:
    sketch = HyperLogLog()
    sketch.add(hash_values(pa.array(np.arange(count) * 7919)))
    assert sketch.estimate() == pytest.approx(count, rel=0.03)


def test_distinct_counter_is_exact_up_to_its_limit_then_estimates() -> None:
    counter = DistinctCounter(limit=1000)
    for start in (0, 300, 600):  # overlapping groups: 900 distinct values
        counter.update(pa.array(np.arange(start, start + 300) % 900, type=pa.int64()))
    counter.update(pa.array([None, None], type=pa.int64()))
    assert (counter.count(), counter.estimated) == (900, False)
    counter.update(pa.array(np.arange(900, 50_000), type=pa.int64()))
    assert counter.estimated
    assert counter.count() == pytest.approx(50_000, rel=0.03)


@pytest.mark.parametrize("distinct", [1000, 1001, 1090, 1150])
def test_distinct_counter_is_exact_at_its_limit_when_groups_overlap(distinct: int) -> None:
    """Two groups whose sizes add up past the limit: a sketch decides only when the
    values are well over it; at the limit, and just over it, the count stays exact."""
    counter = DistinctCounter(limit=1000)
    values = np.arange(distinct) * 7919
    counter.update(pa.array(values[: distinct * 2 // 3], type=pa.int64()))
    counter.update(pa.array(values[distinct // 3 :], type=pa.int64()))
    if distinct <= 1000:
        assert (counter.count(), counter.estimated) == (distinct, False)
    else:
        assert counter.estimated
        assert counter.count() == pytest.approx(distinct, rel=0.03)


def test_string_hashes_do_not_depend_on_their_neighbours() -> None:
    alone = hash_values(pa.array(["customer-42"]))[0]
    among_short = hash_values(pa.array(["a", "customer-42"]))[1]
    among_long = hash_values(pa.array(["x" * 500, "customer-42", "y" * 64]))[1]
    assert alone == among_short == among_long
    assert len(set(hash_values(pa.array(["a", "a ", "b", "", "x" * 500, "x" * 501])))) == 6


def test_value_counts_rank_top_values_exactly_under_the_limit() -> None:
    counts = ValueCounts(limit=100, keep=10)
    counts.update(pa.chunked_array([pa.array(["b", "a", "b", None, "c", "b"])]))
    counts.update(pa.chunked_array([pa.array(["a", "c", "c", "c"])]))
    assert [(item.value, item.count) for item in counts.top_values(2)] == [("c", 4), ("b", 3)]
    assert counts.distinct_count() == 3
    assert not counts.estimated


def test_value_counts_merged_over_many_groups_equal_the_whole_column() -> None:
    """Groups that repeat earlier values and bring new ones, up to the exact limit."""
    rng = np.random.default_rng(5)
    groups = [[f"city-{value}" for value in rng.integers(0, 3000, 2000)] for _ in range(8)]
    counts = ValueCounts(limit=3000, keep=10)
    for group in groups:
        counts.update(pa.chunked_array([pa.array(group)]))
    whole = pa.array([value for group in groups for value in group]).value_counts()
    expected = sorted(
        zip(whole.field("values").to_pylist(), whole.field("counts").to_pylist(), strict=True),
        key=lambda item: (-item[1], item[0]),
    )
    assert not counts.estimated
    assert counts.distinct_count() == len(whole)
    assert [(item.value, item.count) for item in counts.top_values(25)] == expected[:25]


def test_value_counts_keep_heavy_hitters_beyond_the_limit() -> None:
    counts = ValueCounts(limit=1000, keep=100)
    rng = np.random.default_rng(3)
    for _ in range(5):
        rare = [f"id-{value}" for value in rng.integers(0, 10**9, 5000)]
        counts.update(pa.chunked_array([pa.array(rare + ["popular"] * 700 + ["second"] * 300)]))
    top = counts.top_values(2)
    assert [(item.value, item.count) for item in top] == [("popular", 3500), ("second", 1500)]
    assert counts.estimated
    assert counts.distinct_count() == pytest.approx(25_002, rel=0.03)


def test_numeric_stats_merged_over_groups_equal_the_whole() -> None:
    rng = np.random.default_rng(11)
    values = rng.normal(50, 20, 10_000)
    stats = NumericStats()
    for part in np.array_split(values, 7):
        stats.update(pa.chunked_array([pa.array(np.append(part, np.nan), from_pandas=True)]))
    summary = stats.summary()
    assert summary.mean == pytest.approx(values.mean())
    assert summary.std == pytest.approx(values.std())
    assert (summary.min, summary.max) == (values.min(), values.max())


@pytest.mark.parametrize(
    ("values", "arrow_type", "id_like"),
    [
        ([f"u{index}" for index in range(20)], pa.string(), True),
        ([f"u{index}" for index in range(19)], pa.string(), False),  # too few rows to tell
        ([f"u{index % 19}" for index in range(20)], pa.string(), True),  # 19 of 20 = 95%
        ([f"u{index % 18}" for index in range(20)], pa.string(), False),
        (list(range(100)), pa.int64(), True),
        ([index / 3 for index in range(100)], pa.float64(), False),
    ],
)
def test_id_like_rule(values: list[object], arrow_type: pa.DataType, id_like: bool) -> None:
    profiler = ColumnProfiler("c", arrow_type, exact_distinct_limit=1000, top_values=5)
    profiler.update(pa.chunked_array([pa.array(values, type=arrow_type)]))
    assert profiler.column().id_like is id_like


def test_utf8_split_across_chunks_is_still_utf8() -> None:
    inspector = ContentInspector()
    text = "naïve café €".encode()
    for index in range(len(text)):
        inspector.update(text[index : index + 1])
    inspector.finish()
    assert inspector.is_utf8


def test_text_that_is_not_utf8_is_read_as_windows_1252() -> None:
    inspector = ContentInspector()
    inspector.update("caf\u00e9 \u20ac".encode("cp1252") + b" \x81")
    inspector.finish()
    assert inspector.encoding == WINDOWS_1252
    decoded = codecs.decode("caf\u00e9 \u20ac".encode("cp1252") + b" \x81", WINDOWS_1252)
    assert decoded == "caf\u00e9 \u20ac \x81"  # every byte decodes, even those cp1252 leaves out


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"\xfd7zXZ\x00\x00", "COMPRESSED_CONTENT"),
        (b"7z\xbc\xaf\x27\x1c", "COMPRESSED_CONTENT"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1", "BINARY_CONTENT"),
        (b"\xff\xfe\x00\x00a\x00\x00\x00", "ENCODING_UNSUPPORTED"),
    ],
)
def test_signatures_of_files_that_are_not_tables(head: bytes, reason: str) -> None:
    with pytest.raises(ServiceError) as raised:
        sniff(head)
    assert raised.value.reason == reason


@pytest.mark.parametrize(
    ("head", "sniffed"),
    [
        (b"\x1f\x8b\x08\x00", Sniffed(Format.FORMAT_DELIMITED_TEXT, Compression.COMPRESSION_GZIP)),
        (
            b"\x28\xb5\x2f\xfd\x04",
            Sniffed(Format.FORMAT_DELIMITED_TEXT, Compression.COMPRESSION_ZSTD),
        ),
        (b"BZh91AY", Sniffed(Format.FORMAT_DELIMITED_TEXT, Compression.COMPRESSION_BZIP2)),
        (b"PAR1\x15\x00", Sniffed(Format.FORMAT_PARQUET)),
        (b"PK\x03\x04\x14\x00", Sniffed(Format.FORMAT_XLSX)),
        (b"\xff\xfea\x00", Sniffed(Format.FORMAT_DELIMITED_TEXT)),  # UTF-16: decoded later
        (b"a,b\n1,2", Sniffed(Format.FORMAT_DELIMITED_TEXT)),
    ],
)
def test_formats_are_told_by_their_first_bytes(head: bytes, sniffed: Sniffed) -> None:
    assert sniff(head) == sniffed


def test_nul_bytes_mean_binary_content() -> None:
    with pytest.raises(ServiceError) as raised:
        ContentInspector().update(b"a,b\n1,\x002\n")
    assert raised.value.reason == "BINARY_CONTENT"
