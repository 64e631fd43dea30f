"""CSV → typed Parquet copy + profile, streamed in bounded memory.

One pass reads the CSV with pyarrow's streaming reader, block by block,
normalizes the types to the contract's (timestamps in microseconds, times of
day as text), checks field sizes, and hands groups of about `row_group_rows`
rows to the profiler and to the Parquet writer.

Types: pyarrow infers a column's type from the first block only (a few
thousand rows) and fails when a later block holds a value of another type.
That first pass is the fast path. When it fails that way (a numeric column
with a stray "n/a" near the end, a column empty at the top), the types are
inferred again from every value, in a pass that reads all columns as text,
and the file is converted a second time with those types. The result is the
type a reader of the whole column would pick: mixed values make a STRING.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from modelyard.dataset.v1 import dataset_pb2
from runtime.errors import ServiceError, invalid_argument, resource_exhausted
from services.dataset import reasons
from services.dataset.blobstore import BlobWriter
from services.dataset.pipe import RecordingReader
from services.dataset.profile import TableProfiler
from services.dataset.stages import Stage

# Text read as a missing value (pandas' list). Empty fields are missing too.
NULL_VALUES = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
    "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
]  # fmt: skip
TRUE_VALUES = ["true", "True", "TRUE"]
FALSE_VALUES = ["false", "False", "FALSE"]
GROUP_MAX_BYTES = 64 * 1024 * 1024
ERROR_EXCERPT_CHARS = 80


@dataclass(frozen=True)
class CsvFormat:
    delimiter: str = ","
    has_header: bool = True
    encoding: str = "utf8"


@dataclass(frozen=True)
class Limits:
    max_columns: int
    max_field_bytes: int
    max_row_bytes: int
    max_column_name_chars: int


@dataclass(frozen=True)
class ProfileOptions:
    exact_distinct_limit: int
    top_values: int
    row_group_rows: int


@dataclass
class Conversion:
    columns: list[dataset_pb2.Column]
    row_count: int


class TypeConflictError(Exception):
    """A value did not fit the type chosen for its column: convert again with other types."""

    def __init__(self, column: str, source_names: list[str]) -> None:
        super().__init__(f"type conflict in column {column!r}")
        self.column = column
        self.source_names = source_names


class NotUtf8Error(Exception):
    """The text is not UTF-8 after all: convert again with the fallback encoding."""


class IngestCancelledError(Exception):
    """The upload was cancelled while converting."""


# -- reading ------------------------------------------------------------------------------


def _reader_options(
    fmt: CsvFormat, limits: Limits, column_types: Mapping[str, pa.DataType] | None
) -> dict[str, Any]:
    return {
        "read_options": pacsv.ReadOptions(
            block_size=limits.max_row_bytes,
            encoding=fmt.encoding,
            autogenerate_column_names=not fmt.has_header,
            use_threads=True,
        ),
        "parse_options": pacsv.ParseOptions(
            delimiter=fmt.delimiter, newlines_in_values=True, ignore_empty_lines=True
        ),
        "convert_options": pacsv.ConvertOptions(
            column_types=dict(column_types or {}),
            null_values=NULL_VALUES,
            true_values=TRUE_VALUES,
            false_values=FALSE_VALUES,
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    }


class CsvBatches(AbstractContextManager["CsvBatches"]):
    """The record batches of a CSV, with pyarrow's errors turned into the service's."""

    def __init__(
        self,
        source: RecordingReader,
        fmt: CsvFormat,
        limits: Limits,
        column_types: Mapping[str, pa.DataType] | None = None,
    ) -> None:
        self._source = source
        self._fmt = fmt
        self._limits = limits
        self.source_names: list[str] = []
        try:
            self._reader = pacsv.open_csv(source, **_reader_options(fmt, limits, column_types))
        except pa.ArrowInvalid as error:
            raise self._translate(error) from None
        try:
            self.source_names = _column_names(self._reader)
            self.names = validate_column_names(self.source_names, fmt.has_header, limits)
            self.schema = pa.schema(
                [
                    pa.field(name, normalized_type(item.type))
                    for name, item in zip(self.names, self._reader.schema, strict=True)
                ]
            )
        except BaseException:
            self._reader.close()
            raise

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while True:
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as error:
                raise self._translate(error) from None
            yield normalize_batch(batch, self.schema)

    def __exit__(self, *exc_info: object) -> None:
        self._reader.close()

    def _translate(self, error: pa.ArrowInvalid) -> Exception:
        return translate_arrow_error(
            error, self.source_names, self._fmt, self._limits, self._source.recent
        )


_CONFLICT = re.compile(r"In CSV column #(\d+): CSV conversion error to ([^:]+): invalid value")
_RAGGED = re.compile(r"Expected (\d+) columns, got (\d+)(?:: )?(.*)", re.DOTALL)


def translate_arrow_error(
    error: pa.ArrowInvalid,
    source_names: list[str],
    fmt: CsvFormat,
    limits: Limits,
    recent: Callable[[], bytes],
) -> Exception:
    text = str(error)
    if "Empty CSV file" in text:
        return invalid_argument(reasons.EMPTY_FILE, "the file holds no CSV text")
    if ragged := _RAGGED.search(text):
        expected, got, row = ragged.groups()
        excerpt = row[:ERROR_EXCERPT_CHARS]
        return invalid_argument(
            reasons.RAGGED_ROWS,
            f"a row has {got} fields where the header has {expected}: {excerpt!r}",
            expected_fields=expected,
            fields=got,
        )
    if "straddl" in text:
        return _too_large(recent(), fmt, limits)
    if conflict := _CONFLICT.search(text):
        index = int(conflict.group(1))
        if conflict.group(2).strip() == "string" and "UTF8" in text:
            return NotUtf8Error()
        return TypeConflictError(source_names[index], source_names)
    if "UTF8" in text or "UTF-8" in text:
        return NotUtf8Error()
    return invalid_argument(reasons.CSV_UNPARSABLE, f"the CSV cannot be parsed: {text[:200]}")


def _too_large(recent: bytes, fmt: CsvFormat, limits: Limits) -> ServiceError:
    """A row did not fit in the reader's blocks: say whether one field alone is too long."""
    delimiter = fmt.delimiter.encode()
    runs = recent.replace(b"\r", b"\n").replace(delimiter, b"\n").split(b"\n")
    longest = max((len(run) for run in runs), default=0)
    if longest > limits.max_field_bytes:
        return resource_exhausted(
            reasons.FIELD_TOO_LARGE,
            f"a field is longer than the limit of {limits.max_field_bytes} bytes",
            limit_bytes=str(limits.max_field_bytes),
        )
    return resource_exhausted(
        reasons.ROW_TOO_LARGE,
        f"a row is longer than the limit of about {limits.max_row_bytes} bytes "
        "(an unclosed quote makes the rest of the file one field)",
        limit_bytes=str(limits.max_row_bytes),
    )


def _column_names(reader: pacsv.CSVStreamingReader) -> list[str]:
    try:
        return list(reader.schema.names)
    except UnicodeDecodeError:
        # A header that is not UTF-8 (the values may all be ASCII): try the fallback encoding.
        raise NotUtf8Error() from None


def validate_column_names(source_names: list[str], has_header: bool, limits: Limits) -> list[str]:
    if len(source_names) > limits.max_columns:
        raise resource_exhausted(
            reasons.TOO_MANY_COLUMNS,
            f"the file has {len(source_names)} columns; at most {limits.max_columns} are accepted",
            columns=str(len(source_names)),
            limit=str(limits.max_columns),
        )
    if not has_header:
        return [f"column_{index}" for index in range(1, len(source_names) + 1)]
    for index, name in enumerate(source_names, start=1):
        if not name.strip():
            raise invalid_argument(
                reasons.BLANK_COLUMN_NAME, f"column {index} has no name", column_index=str(index)
            )
        if len(name) > limits.max_column_name_chars:
            raise invalid_argument(
                reasons.COLUMN_NAME_TOO_LONG,
                f"column {index}'s name is longer than {limits.max_column_name_chars} characters",
                column_index=str(index),
            )
    repeated = sorted(name for name, count in Counter(source_names).items() if count > 1)
    if repeated:
        shown = ", ".join(repr(name[:ERROR_EXCERPT_CHARS]) for name in repeated[:5])
        raise invalid_argument(
            reasons.DUPLICATE_COLUMN_NAMES, f"column names must be unique; repeated: {shown}"
        )
    return source_names


def normalized_type(arrow_type: pa.DataType) -> pa.DataType:
    """The contract's Arrow type for what the CSV reader produced."""
    if pa.types.is_timestamp(arrow_type):
        return pa.timestamp("us", tz="UTC" if arrow_type.tz else None)
    if pa.types.is_time(arrow_type):
        return pa.string()
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        raise NotUtf8Error()
    return arrow_type


def normalize_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    columns = [
        column if column.type == item.type else pc.cast(column, item.type, safe=False)
        for column, item in zip(batch.columns, schema, strict=True)
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def check_field_sizes(batch: pa.RecordBatch, limit: int) -> None:
    for item, column in zip(batch.schema, batch.columns, strict=True):
        if not pa.types.is_string(item.type) or column.null_count == len(column):
            continue
        longest = pc.max(pc.binary_length(column)).as_py()
        if longest is not None and longest > limit:
            raise resource_exhausted(
                reasons.FIELD_TOO_LARGE,
                f"a field of column {item.name[:ERROR_EXCERPT_CHARS]!r} is {longest} bytes long; "
                f"the limit is {limit}",
                limit_bytes=str(limit),
            )


# -- the conversion pass ----------------------------------------------------------------


class _RowGroups:
    """Collects record batches into row groups of about `rows` rows (or GROUP_MAX_BYTES)."""

    def __init__(self, rows: int) -> None:
        self._rows = rows
        self._batches: list[pa.RecordBatch] = []
        self._count = 0
        self._bytes = 0

    def add(self, batch: pa.RecordBatch) -> bool:
        """Keep `batch`; True when a group is ready to be taken."""
        self._batches.append(batch)
        self._count += batch.num_rows
        self._bytes += batch.nbytes
        return self._count >= self._rows or self._bytes >= GROUP_MAX_BYTES

    def take(self, schema: pa.Schema) -> pa.Table:
        table = pa.Table.from_batches(self._batches, schema=schema)
        self._batches, self._count, self._bytes = [], 0, 0
        return table

    def take_rest(self, schema: pa.Schema) -> pa.Table | None:
        return self.take(schema) if self._batches else None


def convert(
    source: RecordingReader,
    fmt: CsvFormat,
    limits: Limits,
    options: ProfileOptions,
    sink: BlobWriter,
    cancelled: threading.Event,
    column_types: Mapping[str, pa.DataType] | None = None,
) -> Conversion:
    """One pass: CSV from `source` → Parquet into `sink` (not committed) + profile.

    This thread parses; the profile and the Parquet writer are stages of
    their own that take each group of rows as it is complete.
    """
    with CsvBatches(source, fmt, limits, column_types) as batches:
        schema = batches.schema
        profiler = TableProfiler(schema, options.exact_distinct_limit, options.top_values)
        writer = pq.ParquetWriter(
            sink,
            schema,
            compression=_compression(schema),
            use_dictionary=[item.name for item in schema if pa.types.is_string(item.type)],
        )

        def write_group(table: pa.Table) -> None:
            writer.write_table(table, row_group_size=table.num_rows)

        try:
            with (
                Stage(profiler.update, "profile") as profiling,
                Stage(write_group, "parquet") as writing,
            ):
                for group in _groups(batches, options.row_group_rows, limits, cancelled):
                    profiling.submit(group)
                    writing.submit(group)
        finally:
            writer.close()
    if profiler.rows == 0:
        raise invalid_argument(reasons.HEADER_ONLY, "the file has a header but no data rows")
    return Conversion(columns=profiler.result(), row_count=profiler.rows)


def _compression(schema: pa.Schema) -> dict[str, str]:
    """Snappy, except for floats: their bits barely compress, so it would only cost time."""
    return {item.name: "none" if pa.types.is_floating(item.type) else "snappy" for item in schema}


def _groups(
    batches: CsvBatches, rows: int, limits: Limits, cancelled: threading.Event
) -> Iterator[pa.Table]:
    """The CSV's rows as tables of about `rows` rows (a Parquet row group each)."""
    groups = _RowGroups(rows)
    for batch in batches:
        if cancelled.is_set():
            raise IngestCancelledError
        check_field_sizes(batch, limits.max_field_bytes)
        if groups.add(batch):
            yield groups.take(batches.schema)
    if (last := groups.take_rest(batches.schema)) is not None:
        yield last


# -- type inference from every value (the fallback) -----------------------------------

_WHITESPACE = r"\s*"
_INTEGER = re.compile(rf"^{_WHITESPACE}[+-]?\d+{_WHITESPACE}$").pattern
_FLOAT = re.compile(
    rf"^{_WHITESPACE}[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|(?i:inf|infinity|nan))"
    rf"{_WHITESPACE}$"
).pattern
_DATE = r"^\d{4}-\d{2}-\d{2}$"
_TIME = r"([T ]\d{2}(:\d{2}(:\d{2}(\.\d{1,6})?)?)?)?"
_NAIVE_TIMESTAMP = rf"^\d{{4}}-\d{{2}}-\d{{2}}{_TIME}$"
_ZONED_TIMESTAMP = rf"^\d{{4}}-\d{{2}}-\d{{2}}{_TIME}(Z|[+-]\d{{2}}(:?\d{{2}})?)$"


@dataclass(frozen=True)
class _Kind:
    """A candidate type, in the order pyarrow's own inference tries them."""

    arrow_type: pa.DataType
    pattern: str | None
    trim: bool = False


_KINDS = [
    _Kind(pa.int64(), _INTEGER, trim=True),
    _Kind(pa.bool_(), None),
    _Kind(pa.date32(), _DATE),
    _Kind(pa.timestamp("us"), _NAIVE_TIMESTAMP),
    _Kind(pa.timestamp("us", tz="UTC"), _ZONED_TIMESTAMP),
    _Kind(pa.float64(), _FLOAT, trim=True),
]
_BOOLEAN_TEXT = pa.array(TRUE_VALUES + FALSE_VALUES)


def _accepts(kind: _Kind, values: pa.Array) -> bool:
    """Whether every (non-null) value converts to the kind's type."""
    if kind.pattern is None:
        return bool(pc.all(pc.is_in(values, value_set=_BOOLEAN_TEXT)).as_py())
    if not pc.all(pc.match_substring_regex(values, kind.pattern)).as_py():
        return False
    try:
        pc.cast(pc.utf8_trim_whitespace(values) if kind.trim else values, kind.arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


class _Candidates:
    """The kinds a column's values, seen so far, all convert to."""

    def __init__(self) -> None:
        self.kinds = list(_KINDS)
        self.seen_values = False

    def update(self, column: pa.Array) -> None:
        values = pc.drop_null(column)
        if len(values) == 0:
            return
        self.seen_values = True
        self.kinds = [kind for kind in self.kinds if _accepts(kind, values)]

    def arrow_type(self) -> pa.DataType:
        if not self.seen_values:
            return pa.null()
        return self.kinds[0].arrow_type if self.kinds else pa.string()


def infer_types(
    source: RecordingReader,
    fmt: CsvFormat,
    limits: Limits,
    source_names: Sequence[str],
    cancelled: threading.Event,
) -> dict[str, pa.DataType]:
    """Every column's type, from all its values (read as text)."""
    as_text = {name: pa.string() for name in source_names}
    with CsvBatches(source, fmt, limits, as_text) as batches:
        candidates = [_Candidates() for _ in source_names]
        for batch in batches:
            if cancelled.is_set():
                raise IngestCancelledError
            check_field_sizes(batch, limits.max_field_bytes)
            for candidate, column in zip(candidates, batch.columns, strict=True):
                candidate.update(column)
    return {
        name: candidate.arrow_type()
        for name, candidate in zip(source_names, candidates, strict=True)
    }


# -- putting the passes together ------------------------------------------------------

OpenSource = Callable[[], AbstractContextManager[RecordingReader]]
OpenSink = Callable[[], BlobWriter]


def _convert_into_new_sink(
    open_source: OpenSource,
    open_sink: OpenSink,
    fmt: CsvFormat,
    limits: Limits,
    options: ProfileOptions,
    cancelled: threading.Event,
    column_types: Mapping[str, pa.DataType] | None,
) -> Conversion:
    sink = open_sink()
    try:
        with open_source() as source:
            result = convert(source, fmt, limits, options, sink, cancelled, column_types)
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    return result


def convert_with_inferred_types(
    open_source: OpenSource,
    open_sink: OpenSink,
    fmt: CsvFormat,
    limits: Limits,
    options: ProfileOptions,
    cancelled: threading.Event,
    source_names: list[str],
) -> Conversion:
    """Infer types from every value, then convert; a column that still conflicts becomes text."""
    with open_source() as source:
        types = infer_types(source, fmt, limits, source_names, cancelled)
    for _ in range(len(types) + 1):
        try:
            return _convert_into_new_sink(
                open_source, open_sink, fmt, limits, options, cancelled, types
            )
        except TypeConflictError as conflict:
            types[conflict.column] = pa.string()
    raise AssertionError("every column is text, yet a type conflict remains")


def convert_file(
    open_source: OpenSource,
    open_sink: OpenSink,
    fmt: CsvFormat,
    limits: Limits,
    options: ProfileOptions,
    cancelled: threading.Event,
) -> Conversion:
    """The fast path (types from the first block), then the fallback when a type conflicts."""
    try:
        return _convert_into_new_sink(open_source, open_sink, fmt, limits, options, cancelled, None)
    except TypeConflictError as conflict:
        names = conflict.source_names
    return convert_with_inferred_types(
        open_source, open_sink, fmt, limits, options, cancelled, names
    )
