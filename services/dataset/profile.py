"""Column profiles computed group by group, in memory that does not grow with the file.

Every statistic is merged from per-group aggregates computed by Arrow's
compute kernels (no per-row Python):

- numbers: min, max, and mean / population standard deviation merged with
  Chan's parallel formula (numerically stable);
- distinct counts: exact while a column has at most `exact_distinct_limit`
  distinct values (a sorted set of 64-bit value hashes), a HyperLogLog
  estimate (precision 14, ~1% error) above, flagged `distinct_count_estimated`;
  when a sketch puts the values far over the limit, they are not sorted to
  make sure;
- top values (STRING and BOOLEAN): exact counts while the column is under the
  limit; above it the counts of the TOP_CANDIDATES most frequent values are
  carried from group to group, so the counts shown may fall short;
- ID-like: a STRING or INTEGER column with at least ID_LIKE_MIN_ROWS non-null
  values of which at least ID_LIKE_DISTINCT_RATIO are distinct;
- row number: the first column, when it is INTEGER with no missing value and
  equal to 1, 2, ..., n or 0, 1, ..., n-1 in file order, n >= ROW_NUMBER_MIN_ROWS
  (what R's write.csv and pandas' to_csv add in front of the data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from modelyard.dataset.v1 import dataset_pb2

DataType = dataset_pb2.Column.DataType

ID_LIKE_MIN_ROWS = 20
ID_LIKE_DISTINCT_RATIO = 0.95
ROW_NUMBER_MIN_ROWS = 2
# Candidates for top values carried on once a column has too many distinct values.
TOP_CANDIDATES = 1000
# A HyperLogLog estimate this far above the exact-distinct limit means the values are
# over it (the sketch errs by about 1 %, so 10 % is more than ten standard errors).
SURELY_OVER_LIMIT = 1.1

U64 = npt.NDArray[np.uint64]


def data_type_of(arrow_type: pa.DataType) -> dataset_pb2.Column.DataType:
    """The contract's column type of an (already normalized) Arrow type."""
    if pa.types.is_null(arrow_type):
        return DataType.ALL_NULL
    if pa.types.is_integer(arrow_type):
        return DataType.INTEGER
    if pa.types.is_floating(arrow_type):
        return DataType.FLOAT
    if pa.types.is_boolean(arrow_type):
        return DataType.BOOLEAN
    if pa.types.is_date(arrow_type):
        return DataType.DATE
    if pa.types.is_timestamp(arrow_type):
        return DataType.TIMESTAMP
    return DataType.STRING


# -- hashing and HyperLogLog ------------------------------------------------------------

_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_POLY = np.uint64(0x100000001B3)
_STRING_SLICE_BYTES = 256 * 1024
_SHORT_STRING_BYTES = 64


def _mix64(values: U64) -> U64:
    """splitmix64's finalizer: spreads every input bit over the 64 output bits."""
    return _mix64_in_place(values.copy())


def _mix64_in_place(values: U64, scratch: U64 | None = None) -> U64:
    """`_mix64`, overwriting `values` (an array of the caller's own).

    With one scratch array instead of a new array per operation: every array
    of a row group's size is a fresh mapping under the service's fixed mmap
    threshold (memory.py), and its page faults cost more than the arithmetic.
    """
    if scratch is None:
        scratch = np.empty_like(values)
    for shift, factor in ((30, _MIX_1), (27, _MIX_2), (31, None)):
        np.right_shift(values, np.uint64(shift), out=scratch)
        np.bitwise_xor(values, scratch, out=values)
        if factor is not None:
            np.multiply(values, factor, out=values)
    return values


class _Powers:
    """POLY**k mod 2**64 for k = 0, 1, ..., grown on demand."""

    def __init__(self) -> None:
        self._table: U64 = np.ones(1, dtype=np.uint64)

    def upto(self, length: int) -> U64:
        if len(self._table) < length:
            size = max(length, 2 * len(self._table))
            factors = np.full(size, _POLY, dtype=np.uint64)
            factors[0] = 1
            self._table = np.cumprod(factors, dtype=np.uint64)
        return self._table[:length]


_powers = _Powers()


def _hash_string_slice(array: pa.Array) -> U64:
    width = np.int64 if pa.types.is_large_string(array.type) else np.int32
    offsets = np.frombuffer(array.buffers()[1], dtype=width)[
        array.offset : array.offset + len(array) + 1
    ].astype(np.int64)
    start, stop = int(offsets[0]), int(offsets[-1])
    lengths = np.diff(offsets)
    data_buffer = array.buffers()[2]
    if stop == start or data_buffer is None:
        return _mix64(lengths.astype(np.uint64) * _GOLDEN)
    data = np.frombuffer(data_buffer, dtype=np.uint8)[start:stop].astype(np.uint64) + np.uint64(1)
    positions = np.arange(stop - start, dtype=np.int64) - np.repeat(offsets[:-1] - start, lengths)
    weighted = data * _powers.upto(int(lengths.max()))[positions]
    cumulative = np.concatenate(
        (np.zeros(1, dtype=np.uint64), np.cumsum(weighted, dtype=np.uint64))
    )
    sums = cumulative[offsets[1:] - start] - cumulative[offsets[:-1] - start]
    return _mix64(sums ^ (lengths.astype(np.uint64) * _GOLDEN))


def _hash_long_strings(array: pa.Array) -> U64:
    """A polynomial hash of every string, computed over Arrow's buffers in bounded slices."""
    total = int(pc.sum(pc.binary_length(array)).as_py() or 0)
    rows_per_slice = max(1, len(array) * _STRING_SLICE_BYTES // max(total, 1))
    parts = [
        _hash_string_slice(array.slice(offset, rows_per_slice))
        for offset in range(0, len(array), rows_per_slice)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def _hash_short_strings(array: pa.Array, lengths: npt.NDArray[np.int64]) -> U64:
    """Strings of at most _SHORT_STRING_BYTES bytes, hashed eight bytes at a time.

    The strings are padded to one width and viewed as rows of 64-bit words;
    each string mixes in only its own words, so its hash does not depend on
    the width its neighbours needed.
    """
    width = max(8, -(-int(lengths.max(initial=0)) // 8) * 8)
    padded = pc.ascii_rpad(array, width=width).cast(pa.binary(width))
    words = np.frombuffer(
        padded.buffers()[1],
        dtype=np.uint64,
        count=len(array) * width // 8,
        offset=padded.offset * width,
    ).reshape(len(array), width // 8)
    word_counts = (lengths + 7) // 8
    hashes = lengths.astype(np.uint64) * _GOLDEN
    mixed, scratch = np.empty_like(hashes), np.empty_like(hashes)
    for column in range(width // 8):
        np.bitwise_xor(hashes, words[:, column], out=mixed)
        np.copyto(hashes, _mix64_in_place(mixed, scratch), where=column < word_counts)
    return _mix64_in_place(hashes, scratch)


def _hash_strings(array: pa.Array) -> U64:
    lengths = pc.binary_length(array).to_numpy(zero_copy_only=False).astype(np.int64)
    short = lengths <= _SHORT_STRING_BYTES
    if short.all():
        return _hash_short_strings(array, lengths)
    hashes = np.empty(len(array), dtype=np.uint64)
    mask = pa.array(short)
    hashes[short] = _hash_short_strings(array.filter(mask), lengths[short])
    hashes[~short] = _hash_long_strings(array.filter(pc.invert(mask)))
    return hashes


def hash_values(array: pa.Array) -> U64:
    """64-bit hashes of an array's non-null values."""
    array = pc.drop_null(array)
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return _hash_strings(array)
    # Each branch makes one array of its own (the addition, astype) and mixes it in place.
    if pa.types.is_floating(array.type):
        floats = array.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        return _mix64_in_place((floats + 0.0).view(np.uint64))  # -0.0 == 0.0
    if pa.types.is_boolean(array.type):
        return _mix64_in_place(array.to_numpy(zero_copy_only=False).astype(np.uint64))
    if pa.types.is_timestamp(array.type) or pa.types.is_date(array.type):
        array = array.view(pa.int64() if array.type.bit_width == 64 else pa.int32())
    integers = array.to_numpy(zero_copy_only=False).astype(np.int64)
    return _mix64_in_place(integers.view(np.uint64))


class HyperLogLog:
    PRECISION = 14

    def __init__(self) -> None:
        self.registers = np.zeros(1 << self.PRECISION, dtype=np.uint8)

    def add(self, hashes: U64) -> None:
        rest_bits = 64 - self.PRECISION
        # Few arrays of the hashes' size (see _mix64_in_place): the register index
        # (below 2**PRECISION, so its bits read as intp), the remaining bits as floats
        # (exact: fewer than 53 bits), and the rank.
        index = np.right_shift(hashes, np.uint64(rest_bits)).view(np.intp)
        rest = np.empty(len(hashes), dtype=np.float64)
        np.bitwise_and(hashes, np.uint64((1 << rest_bits) - 1), out=rest, casting="unsafe")
        # Rank: position of the leftmost 1 in the remaining bits (rest_bits + 1 when none).
        _, bit_length = np.frexp(rest, out=(rest, np.empty(len(hashes), dtype=np.intc)))
        rank = np.subtract(np.int32(rest_bits + 1), bit_length, out=bit_length).astype(np.uint8)
        # Only ranks above their register's change it: once the registers have filled up
        # (after a few groups) that is a small part of the hashes.
        raises = rank > self.registers[index]
        np.maximum.at(self.registers, index[raises], rank[raises])

    def estimate(self) -> int:
        size = len(self.registers)
        alpha = 0.7213 / (1 + 1.079 / size)
        raw = alpha * size * size / float(np.sum(np.ldexp(1.0, -self.registers.astype(np.int64))))
        zeros = int(np.count_nonzero(self.registers == 0))
        if raw <= 2.5 * size and zeros:
            return round(size * math.log(size / zeros))
        return round(raw)


# -- distinct values and top values ---------------------------------------------------


def _sorted_unique(values: U64) -> U64:
    """np.unique for hashes: a (SIMD) sort and a neighbour compare, several times faster."""
    values = np.sort(values)
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


class DistinctCounter:
    """Distinct values of a column, kept as a sorted set of their 64-bit hashes.

    Exact (a collision among a few hundred thousand 64-bit hashes is a
    one-in-billions event) up to `limit` values, a HyperLogLog estimate above.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._hashes: U64 | None = np.zeros(0, dtype=np.uint64)
        self._sketch: HyperLogLog | None = None

    @property
    def estimated(self) -> bool:
        return self._sketch is not None

    def update(self, values: pa.Array) -> None:
        """Add the hashes of `values` (nulls are ignored)."""
        hashes = hash_values(values)
        if self._sketch is not None:
            self._sketch.add(hashes)
            return
        assert self._hashes is not None
        if len(self._hashes) + len(hashes) > self._limit and self._surely_over_limit(hashes):
            return
        merged = _sorted_unique(np.concatenate((self._hashes, hashes)))
        if len(merged) <= self._limit:
            self._hashes = merged
            return
        self._sketch = HyperLogLog()
        self._sketch.add(merged)
        self._hashes = None

    def _surely_over_limit(self, hashes: U64) -> bool:
        """Whether a sketch of the known values and `hashes` puts them well over the limit;
        if so, the sketch counts from here on. It skips the sort of both that an exact
        count would take: what costs most in a column of unique numbers."""
        assert self._hashes is not None
        sketch = HyperLogLog()
        sketch.add(self._hashes)
        sketch.add(hashes)
        if sketch.estimate() < SURELY_OVER_LIMIT * self._limit:
            return False
        self._sketch, self._hashes = sketch, None
        return True

    def count(self) -> int:
        if self._sketch is not None:
            return self._sketch.estimate()
        assert self._hashes is not None
        return len(self._hashes)


class ValueCounts:
    """How often each value of a category column occurs, and how many distinct values it has.

    Exact while the column has at most `limit` distinct values. Above, distinct
    values are counted by a DistinctCounter and only the `keep` most frequent
    values seen so far are carried on, so their counts may fall short.
    """

    def __init__(self, limit: int, keep: int) -> None:
        self._limit = limit
        self._keep = keep
        self._values: pa.Array | None = None
        self._counts: pa.Array | None = None
        self._distinct: DistinctCounter | None = None

    @property
    def estimated(self) -> bool:
        return self._distinct is not None

    def update(self, column: pa.ChunkedArray) -> None:
        counted = pc.value_counts(column)  # nulls come out as one entry
        counted = counted.filter(pc.is_valid(counted.field("values")))
        if len(counted) == 0:
            return
        if self._distinct is not None:
            self._distinct.update(counted.field("values"))
        values, counts = self._merged(counted.field("values"), counted.field("counts"))
        if len(values) > self._limit and self._distinct is None:
            self._distinct = DistinctCounter(limit=0)  # an estimate from here on
            self._distinct.update(values)
        if self._distinct is not None and len(values) > self._keep:
            kept = pc.select_k_unstable(
                pa.table({"c": counts}), k=self._keep, sort_keys=[("c", "descending")]
            )
            values, counts = pc.take(values, kept), pc.take(counts, kept)
        self._values, self._counts = values, counts

    def _merged(self, values: pa.Array, counts: pa.Array) -> tuple[pa.Array, pa.Array]:
        """The counts so far plus a group's (`values` distinct): the values known so far
        in their order, then the group's new ones in theirs (the order a group-by of the
        two, one after the other, gives). A lookup in the known values, not a group-by of
        both: near the exact-distinct limit the known values outnumber a group's."""
        if self._values is None or self._counts is None:
            return values, counts
        positions = pc.index_in(values, value_set=self._values)
        known = positions.is_valid()
        totals = self._counts.to_numpy(zero_copy_only=False).copy()
        totals[positions.filter(known).to_numpy()] += counts.filter(known).to_numpy()
        unknown = pc.invert(known)
        return (
            pa.concat_arrays([self._values, values.filter(unknown)]),
            pa.concat_arrays([pa.array(totals), counts.filter(unknown)]),
        )

    def distinct_count(self) -> int:
        if self._distinct is not None:
            return self._distinct.count()
        return 0 if self._values is None else len(self._values)

    def top_values(self, k: int) -> list[dataset_pb2.ValueCount]:
        if self._values is None or self._counts is None or len(self._values) == 0:
            return []
        order = pc.select_k_unstable(
            pa.table({"c": self._counts, "v": self._values}),
            k=min(k, len(self._values)),
            sort_keys=[("c", "descending"), ("v", "ascending")],
        )
        values = pc.take(self._values, order).to_pylist()
        counts = pc.take(self._counts, order).to_pylist()
        return [
            dataset_pb2.ValueCount(value=_value_text(value), count=int(count))
            for value, count in zip(values, counts, strict=True)
        ]


def _value_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- numbers ----------------------------------------------------------------------------


@dataclass
class NumericStats:
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    minimum: float = math.inf
    maximum: float = -math.inf

    def update(self, column: pa.ChunkedArray, present: pa.Array | None = None) -> None:
        """Add a group's values; `present`, when given, is `column` without its nulls
        in one array."""
        count = len(column) - column.null_count
        if count == 0:
            return
        if present is None:
            present = pc.drop_null(column.combine_chunks())
        # numpy's fmin/fmax skip NaN as Arrow's min_max does, several times faster.
        values = present.to_numpy(zero_copy_only=False)
        self.minimum = min(self.minimum, float(np.fmin.reduce(values)))
        self.maximum = max(self.maximum, float(np.fmax.reduce(values)))
        mean = float(pc.mean(column).as_py())
        m2 = float(pc.variance(column, ddof=0).as_py()) * count
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.count * count / total
        self.count = total

    def summary(self) -> dataset_pb2.NumericSummary:
        if self.count == 0:
            return dataset_pb2.NumericSummary()
        return dataset_pb2.NumericSummary(
            min=self.minimum,
            max=self.maximum,
            mean=self.mean,
            std=math.sqrt(max(self.m2 / self.count, 0.0)) if math.isfinite(self.m2) else math.nan,
        )


# -- row numbers ------------------------------------------------------------------------


class RowNumbers:
    """Whether an integer column, seen group by group, is its rows' numbers (from 0 or 1)."""

    def __init__(self) -> None:
        self.start: int | None = None
        self.possible = True
        self.rows = 0

    def update(self, column: pa.ChunkedArray) -> None:
        if not self.possible:
            return
        if column.null_count:
            self.possible = False
            return
        values = column.to_numpy()
        if self.start is None and len(values):
            self.start = int(values[0])
            if self.start not in (0, 1):
                self.possible = False
                return
        first = (self.start or 0) + self.rows
        expected = np.arange(first, first + len(values), dtype=np.int64)
        self.possible = bool(np.array_equal(values, expected))
        self.rows += len(values)

    @property
    def found(self) -> bool:
        return self.possible and self.rows >= ROW_NUMBER_MIN_ROWS


# -- columns ----------------------------------------------------------------------------


@dataclass
class ColumnProfiler:
    name: str
    arrow_type: pa.DataType
    exact_distinct_limit: int
    top_values: int
    rows: int = 0
    nulls: int = 0
    numbers: NumericStats | None = None
    categories: ValueCounts | None = None
    distinct: DistinctCounter | None = None
    earliest: object = None
    latest: object = None
    date_format: str = ""
    row_numbers: RowNumbers | None = None
    data_type: dataset_pb2.Column.DataType = field(init=False)

    def __post_init__(self) -> None:
        self.data_type = data_type_of(self.arrow_type)
        if self.data_type in (DataType.INTEGER, DataType.FLOAT):
            self.numbers = NumericStats()
        if self.data_type == DataType.INTEGER:
            self.row_numbers = RowNumbers()
        if self.data_type in (DataType.STRING, DataType.BOOLEAN):
            keep = max(TOP_CANDIDATES, 10 * self.top_values)
            self.categories = ValueCounts(self.exact_distinct_limit, keep)
        elif self.data_type != DataType.ALL_NULL:
            self.distinct = DistinctCounter(self.exact_distinct_limit)

    def distinct_count(self) -> int:
        if self.categories is not None:
            return self.categories.distinct_count()
        return self.distinct.count() if self.distinct is not None else 0

    def update(self, column: pa.ChunkedArray) -> None:
        self.rows += len(column)
        self.nulls += column.null_count
        # The values in one array, made once for the numeric summary and the distinct count.
        present = (
            pc.drop_null(column.combine_chunks())
            if self.numbers is not None or self.distinct is not None
            else None
        )
        if self.numbers is not None:
            self.numbers.update(column, present)
        if self.row_numbers is not None:
            self.row_numbers.update(column)
        if self.categories is not None:
            self.categories.update(column)
        if self.distinct is not None:
            self.distinct.update(present)
        if self.data_type in (DataType.DATE, DataType.TIMESTAMP) and column.null_count < len(
            column
        ):
            extremes = pc.min_max(column)
            low, high = extremes["min"].as_py(), extremes["max"].as_py()
            self.earliest = low if self.earliest is None else min(self.earliest, low)
            self.latest = high if self.latest is None else max(self.latest, high)

    def column(self) -> dataset_pb2.Column:
        profile = dataset_pb2.ColumnProfile(null_count=self.nulls)
        if self.categories is not None:
            profile.distinct_count = self.categories.distinct_count()
            profile.distinct_count_estimated = self.categories.estimated
            profile.top_values.extend(self.categories.top_values(self.top_values))
        if self.distinct is not None:
            profile.distinct_count = self.distinct.count()
            profile.distinct_count_estimated = self.distinct.estimated
        if self.numbers is not None:
            profile.numeric.CopyFrom(self.numbers.summary())
        if self.earliest is not None and self.latest is not None:
            profile.min_value = self.earliest.isoformat()  # type: ignore[attr-defined]
            profile.max_value = self.latest.isoformat()  # type: ignore[attr-defined]
        if self.data_type in (DataType.DATE, DataType.TIMESTAMP):
            profile.date_format = self.date_format
        return dataset_pb2.Column(
            name=self.name,
            data_type=self.data_type,
            id_like=self._id_like(),
            profile=profile,
            row_number=self.row_numbers is not None and self.row_numbers.found,
        )

    def _id_like(self) -> bool:
        if self.data_type not in (DataType.STRING, DataType.INTEGER):
            return False
        present = self.rows - self.nulls
        distinct = min(self.distinct_count(), present)
        return present >= ID_LIKE_MIN_ROWS and distinct >= ID_LIKE_DISTINCT_RATIO * present


class TableProfiler:
    """Profiles of every column of a table read group by group."""

    def __init__(self, schema: pa.Schema, exact_distinct_limit: int, top_values: int) -> None:
        self.rows = 0
        self.columns = [
            ColumnProfiler(item.name, item.type, exact_distinct_limit, top_values)
            for item in schema
        ]
        for later in self.columns[1:]:
            later.row_numbers = None  # only the first column can hold row numbers

    def set_date_formats(self, formats: list[str]) -> None:
        """How each column's dates were written (used for DATE and TIMESTAMP columns)."""
        for profiler, date_format in zip(self.columns, formats, strict=False):
            profiler.date_format = date_format

    def update(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        for profiler, column in zip(self.columns, table.columns, strict=True):
            profiler.update(column)

    def result(self) -> list[dataset_pb2.Column]:
        return [profiler.column() for profiler in self.columns]
