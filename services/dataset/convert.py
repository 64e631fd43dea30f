"""Delimited text → typed Parquet copy + profile, streamed in bounded memory.

One pass reads the text with pyarrow's streaming CSV reader, block by block,
repairs the header (`headers.py`), normalizes the types to the contract's
(timestamps in microseconds, times of day as text, dates written `d/m/Y` and
the like parsed by `dates.py`), checks field sizes, and hands groups of about
`row_group_rows` rows to the profiler and to the Parquet writer.

Types: pyarrow infers a column's type from the first block only (a few
thousand rows), and the date patterns are chosen from that block too. That
first pass is the fast path: the first block is read once on its own to learn
those types, and the reader is then told them (it takes less CPU so). When a
later value does not fit (a numeric column with a stray "n/a" near the end, a
column empty at the top, a date that settles day-first vs month-first late),
`TypeConflictError` says so and the types are inferred again from every value
(`inference.py`), then the file is converted a second time with those types.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from modelyard.dataset.v1 import dataset_pb2
from runtime.errors import ServiceError, invalid_argument, resource_exhausted
from services.dataset import dates, reasons
from services.dataset.blobstore import BlobWriter
from services.dataset.headers import Header, HeaderLimits, repair_header
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
# Blocks of text the CSV reader may hold beyond the batch being taken (see BoundedReadAhead).
READ_AHEAD_BLOCKS = 4
READER_STARVED_SECONDS = 0.5


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

    @property
    def header(self) -> HeaderLimits:
        return HeaderLimits(self.max_columns, self.max_column_name_chars)


@dataclass(frozen=True)
class ProfileOptions:
    exact_distinct_limit: int
    top_values: int
    row_group_rows: int


@dataclass
class Conversion:
    columns: list[dataset_pb2.Column]
    row_count: int
    header_repairs: list[dataset_pb2.HeaderRepair] = field(default_factory=list)


@dataclass(frozen=True)
class ColumnPlan:
    """How to read one column of the text: the reader's type, and a date pattern."""

    read_type: pa.DataType
    date_pattern: dates.DatePattern | None = None


@dataclass(frozen=True)
class TypePlan:
    """Every column's plan, by position, and whether the trailing blank column goes."""

    columns: list[ColumnPlan]
    drop_trailing: bool = False

    def with_text(self, index: int) -> TypePlan:
        columns = list(self.columns)
        columns[index] = ColumnPlan(pa.string())
        return replace(self, columns=columns)


class TypeConflictError(Exception):
    """A value did not fit the type chosen for its column: convert again with other types."""

    def __init__(self, index: int, source_names: list[str] | None = None) -> None:
        super().__init__(f"type conflict in column {index + 1}")
        self.index = index
        self.source_names = source_names or []


class NotUtf8Error(Exception):
    """The text is not UTF-8 after all: convert again with the fallback encoding."""


class IngestCancelledError(Exception):
    """The upload was cancelled while converting."""


OpenSource = Callable[[], AbstractContextManager[RecordingReader]]
OpenSink = Callable[[], BlobWriter]


@dataclass(frozen=True)
class ConversionJob:
    """Everything a conversion pass needs besides the types: where the text comes
    from and where the Parquet goes, how to parse, the limits, the profile options
    and the upload's cancellation."""

    open_source: OpenSource
    open_sink: OpenSink
    fmt: CsvFormat
    limits: Limits
    options: ProfileOptions
    cancelled: threading.Event

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise IngestCancelledError


# -- reading ------------------------------------------------------------------------------


def _reader_options(
    fmt: CsvFormat, limits: Limits, column_types: Mapping[str, pa.DataType]
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
            column_types=dict(column_types),
            null_values=NULL_VALUES,
            true_values=TRUE_VALUES,
            false_values=FALSE_VALUES,
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    }


def _column_types(source_names: list[str] | None, plan: TypePlan | None) -> dict[str, pa.DataType]:
    """The reader's column types by name. Columns sharing a name share a type: text
    when their plans differ (each is cast to its own type after reading)."""
    if plan is None or source_names is None:
        return {}
    types: dict[str, pa.DataType] = {}
    for name, column in zip(source_names, plan.columns, strict=True):
        wanted = pa.string() if column.date_pattern is not None else column.read_type
        if name in types and types[name] != wanted:
            wanted = pa.string()
        types[name] = wanted
    return types


class BoundedReadAhead(io.RawIOBase):
    """The text source as the CSV reader sees it: never more than `blocks` reads ahead
    of the batches taken.

    pyarrow's streaming CSV reader fetches its blocks on a thread of its own and
    keeps up to 32 of them queued, a number it does not let callers change: 32 MiB of
    text per conversion with 1 MiB blocks, which also drains the upload's bounded pipes
    into a queue of its own. Here a read waits while the reader is `blocks` reads
    ahead of the batches taken. A read made while the consumer has waited
    `starved_seconds` for a batch goes ahead anyway (and is not counted), so a reader
    that needs more text to finish a batch never waits for a batch it cannot finish.

    Opening the reader is the first such wait: `open_csv` reads and parses the first
    block itself, and when that fails, pyarrow waits for the read its thread has in
    flight before raising. A read held back then would wait for a batch nobody takes.
    """

    def __init__(self, source: RecordingReader, blocks: int, starved_seconds: float) -> None:
        super().__init__()
        self._source = source
        self._blocks = blocks
        self._starved_seconds = starved_seconds
        self._ahead = 0
        self._waiting_since: float | None = time.monotonic()  # until `opened()`
        self._closed = False
        self._condition = threading.Condition()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        with self._condition:
            while self._ahead >= self._blocks and not self._closed:
                if self._consumer_starved():
                    # This read is for the batch being waited for: not counted, and
                    # the next such read waits for another spell of starvation.
                    self._waiting_since = time.monotonic()
                    self._ahead -= 1
                    break
                self._condition.wait(self._starved_seconds / 4)
            self._ahead += 1
        return self._source.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        memoryview(buffer)[: len(data)] = data
        return len(data)

    def _consumer_starved(self) -> bool:
        waiting_since = self._waiting_since
        return (
            waiting_since is not None and time.monotonic() - waiting_since >= self._starved_seconds
        )

    def opened(self) -> None:
        """The reader is open: nobody waits for a batch until one is asked for."""
        with self._condition:
            self._waiting_since = None

    def waiting_for_batch(self) -> None:
        with self._condition:
            self._waiting_since = time.monotonic()

    def took_batch(self) -> None:
        with self._condition:
            self._waiting_since = None
            self._ahead = max(0, self._ahead - 1)
            self._condition.notify_all()

    def stop(self) -> None:
        """Release a read waiting here (the reader is being closed)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()


def _first_block_plan(
    source: RecordingReader, fmt: CsvFormat, limits: Limits
) -> tuple[RecordingReader, tuple[list[str], TypePlan] | None]:
    """The types pyarrow infers from the first block, learnt by reading that block on
    its own, and the text to read again from its start.

    The streaming reader infers types from its first block only, but a reader left
    to infer them spends about half as much CPU again on the same text as one told
    them (95 MB: 0.44-0.52 s against 0.28-0.33 s; the cause is inside pyarrow).
    Reading the first block twice costs one block. None when that cannot be done
    (the reader then infers, and reports what is wrong with the text), or when two
    columns share a name: the reader takes types by name.
    """
    block = limits.max_row_bytes  # the reader's block size
    head = source.read(block)
    pending = [head]
    text = RecordingReader(lambda: pending.pop() if pending else source.read(block), 0)
    # The reader's first block ends at its last complete row: the rest is read with the next.
    rows = head if len(head) < block else _complete_rows(head)
    if rows is None:
        return text, None
    try:
        with contextlib.closing(
            pacsv.open_csv(io.BytesIO(rows), **_reader_options(fmt, limits, {}))
        ) as probe:
            names = list(probe.schema.names)
            if len(set(names)) < len(names):
                return text, None
            first = next(iter(probe), None)
            header = repair_header(names, fmt.has_header, limits.header)
            return text, (names, _plan_from(probe.schema, first, header))
    except (pa.ArrowException, UnicodeDecodeError, ServiceError):
        return text, None


def _complete_rows(text: bytes, max_quoted_line_ends: int = 1000) -> bytes | None:
    """`text` up to its last line end outside quotes; None when there is none (or when
    more than `max_quoted_line_ends` line ends at its end are inside quotes)."""
    quotes_before = text.count(b'"')  # before `end`
    end = len(text)
    for _ in range(max_quoted_line_ends):
        line_end = text.rfind(b"\n", 0, end)
        if line_end < 0:
            return None
        quotes_before -= text.count(b'"', line_end, end)
        if quotes_before % 2 == 0:
            return text[: line_end + 1]
        end = line_end
    return None


def _plan_from(schema: pa.Schema, first: pa.RecordBatch | None, header: Header) -> TypePlan:
    """Every column's type from the reader's schema, date patterns from its first batch,
    and whether the trailing blank column goes (no value in it)."""
    columns = []
    for index, item in enumerate(schema):
        pattern = None
        if first is not None and pa.types.is_string(item.type):
            pattern = dates.detect(first.column(index))
        columns.append(ColumnPlan(item.type, pattern))
    trailing = header.trailing_blank
    drop = trailing is not None and pa.types.is_null(schema.field(trailing).type)
    return TypePlan(columns, drop)


class CsvBatches(AbstractContextManager["CsvBatches"]):
    """The record batches of a text table, typed and named as the dataset keeps them,
    with pyarrow's errors turned into the service's."""

    def __init__(
        self,
        source: RecordingReader,
        fmt: CsvFormat,
        limits: Limits,
        plan: TypePlan | None = None,
        source_names: list[str] | None = None,
    ) -> None:
        self._source = source
        self._fmt = fmt
        self._limits = limits
        self._first: pa.RecordBatch | None = None
        text = source
        if plan is None:
            text, first_block = _first_block_plan(source, fmt, limits)
            if first_block is not None:
                source_names, plan = first_block
        self._read_ahead = BoundedReadAhead(text, READ_AHEAD_BLOCKS, READER_STARVED_SECONDS)
        try:
            self._reader = pacsv.open_csv(
                self._read_ahead,
                **_reader_options(fmt, limits, _column_types(source_names, plan)),
            )
        except pa.ArrowInvalid as error:
            self._read_ahead.stop()
            raise self._translate(error) from None
        self._read_ahead.opened()
        try:
            self.source_names = _column_names(self._reader)
            self.header = repair_header(self.source_names, fmt.has_header, limits.header)
            self.plan = plan if plan is not None else self._plan_from_first_batch()
            if self.plan.drop_trailing:
                self.header = self.header.drop_trailing()
            self.schema = pa.schema(
                [
                    pa.field(name, _target_type(column))
                    for name, column in zip(self.header.names, self.plan.columns, strict=False)
                ]
            )
        except BaseException:
            self._close()
            raise

    def _plan_from_first_batch(self) -> TypePlan:
        """Types as pyarrow inferred them, with date patterns chosen from the first block."""
        self._first = self._read_next()
        return _plan_from(self._reader.schema, self._first, self.header)

    def _read_next(self) -> pa.RecordBatch | None:
        self._read_ahead.waiting_for_batch()
        try:
            return self._reader.read_next_batch()
        except StopIteration:
            return None
        except pa.ArrowInvalid as error:
            raise self._translate(error) from None
        finally:
            self._read_ahead.took_batch()

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        if self._first is not None:
            first, self._first = self._first, None
            yield self._normalized(first)
        while (batch := self._read_next()) is not None:
            yield self._normalized(batch)

    def raw_batches(self) -> Iterator[pa.RecordBatch]:
        """The batches as read, every source column (for type inference)."""
        while (batch := self._read_next()) is not None:
            yield batch

    def _normalized(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        columns = []
        for index, item in enumerate(self.schema):
            column = batch.column(index)
            pattern = self.plan.columns[index].date_pattern
            if pattern is not None:
                try:
                    column = dates.parse(column, pattern)
                except (dates.InvalidDateError, pa.ArrowInvalid):
                    raise TypeConflictError(index, self.source_names) from None
            elif column.type != item.type:
                column = _cast(column, item.type, index, self.source_names)
            columns.append(column)
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)

    def __exit__(self, *exc_info: object) -> None:
        self._close()

    def _close(self) -> None:
        self._read_ahead.stop()
        self._reader.close()

    def _translate(self, error: pa.ArrowInvalid) -> Exception:
        translated = translate_arrow_error(error, self._fmt, self._limits, self._source.recent)
        if isinstance(translated, TypeConflictError):
            translated.source_names = getattr(self, "source_names", [])
        return translated


def _target_type(column: ColumnPlan) -> pa.DataType:
    if column.date_pattern is not None:
        return column.date_pattern.arrow_type
    return normalized_type(column.read_type)


def _cast(column: pa.Array, target: pa.DataType, index: int, names: list[str]) -> pa.Array:
    try:
        if pa.types.is_string(column.type) and not pa.types.is_string(target):
            column = pc.utf8_trim_whitespace(column)
        return pc.cast(column, target, safe=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise TypeConflictError(index, names) from None


_CONFLICT = re.compile(r"In CSV column #(\d+): CSV conversion error to ([^:]+): invalid value")
_RAGGED = re.compile(r"Expected (\d+) columns, got (\d+)(?:: )?(.*)", re.DOTALL)


def translate_arrow_error(
    error: pa.ArrowInvalid, fmt: CsvFormat, limits: Limits, recent: Callable[[], bytes]
) -> Exception:
    text = str(error)
    if "Empty CSV file" in text:
        return invalid_argument(reasons.EMPTY_FILE, "the file holds no text")
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
        if conflict.group(2).strip() == "string" and "UTF8" in text:
            return NotUtf8Error()
        return TypeConflictError(int(conflict.group(1)))
    if "UTF8" in text or "UTF-8" in text:
        return NotUtf8Error()
    return invalid_argument(reasons.CSV_UNPARSABLE, f"the text cannot be parsed: {text[:200]}")


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


def normalized_type(arrow_type: pa.DataType) -> pa.DataType:
    """The contract's Arrow type for what the CSV reader produced."""
    if pa.types.is_timestamp(arrow_type):
        return pa.timestamp("us", tz="UTC" if arrow_type.tz else None)
    if pa.types.is_time(arrow_type):
        return pa.string()
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        raise NotUtf8Error()
    return arrow_type


def check_field_sizes(batch: pa.RecordBatch | pa.Table, limit: int) -> None:
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


class RowGroups:
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


class ParquetSink:
    """Profiles and writes groups of rows, each on a stage of its own."""

    def __init__(self, schema: pa.Schema, options: ProfileOptions, sink: BlobWriter | None) -> None:
        self.profiler = TableProfiler(schema, options.exact_distinct_limit, options.top_values)
        self.writer_sink = sink
        self._writer = (
            pq.ParquetWriter(
                sink,
                schema,
                compression=_compression(schema),
                use_dictionary=[item.name for item in schema if pa.types.is_string(item.type)],
            )
            if sink is not None
            else None
        )

    def write_all(self, groups: Iterator[pa.Table]) -> None:
        writer = self._writer

        def write_group(table: pa.Table) -> None:
            assert writer is not None
            writer.write_table(table, row_group_size=table.num_rows)

        try:
            with Stage(self.profiler.update, "profile") as profiling:
                if writer is None or self.writer_sink is None:
                    for group in groups:
                        profiling.submit(group)
                    return
                with Stage(write_group, "parquet") as writing:
                    for group in groups:
                        profiling.submit(group)
                        writing.submit(group)
                # The file's end goes to the store while the last group is profiled.
                writer.close()
                self.writer_sink.finish()
        finally:
            if writer is not None:
                writer.close()  # once only: a closed writer ignores it

    def result(self, repairs: list[dataset_pb2.HeaderRepair]) -> Conversion:
        if self.profiler.rows == 0:
            raise invalid_argument(
                reasons.HEADER_ONLY, "the file has column names but no data rows"
            )
        return Conversion(self.profiler.result(), self.profiler.rows, list(repairs))


def convert(
    source: RecordingReader,
    job: ConversionJob,
    sink: BlobWriter,
    plan: TypePlan | None = None,
    source_names: list[str] | None = None,
) -> Conversion:
    """One pass: text from `source` → Parquet into `sink` (not committed) + profile.

    This thread parses; the profile and the Parquet writer are stages of
    their own that take each group of rows as it is complete.
    """
    with CsvBatches(source, job.fmt, job.limits, plan, source_names) as batches:
        output = ParquetSink(batches.schema, job.options, sink)
        output.profiler.set_date_formats(_date_formats(batches))
        output.write_all(_groups(batches, job))
        return output.result(batches.header.repairs)


def _date_formats(batches: CsvBatches) -> list[str]:
    return [
        dates.iso_or_pattern(column.date_pattern)
        for column, _ in zip(batches.plan.columns, batches.schema, strict=False)
    ]


def _compression(schema: pa.Schema) -> dict[str, str]:
    """Snappy, except for floats: their bits barely compress, so it would only cost time."""
    return {item.name: "none" if pa.types.is_floating(item.type) else "snappy" for item in schema}


def _groups(batches: CsvBatches, job: ConversionJob) -> Iterator[pa.Table]:
    """The rows as tables of about `row_group_rows` rows (a Parquet row group each)."""
    groups = RowGroups(job.options.row_group_rows)
    for batch in batches:
        job.check_cancelled()
        check_field_sizes(batch, job.limits.max_field_bytes)
        if groups.add(batch):
            yield groups.take(batches.schema)
    if (last := groups.take_rest(batches.schema)) is not None:
        yield last


# -- putting the passes together ------------------------------------------------------


def convert_into_new_sink(
    job: ConversionJob, plan: TypePlan | None, source_names: list[str] | None = None
) -> Conversion:
    sink = job.open_sink()
    try:
        with job.open_source() as source:
            result = convert(source, job, sink, plan, source_names)
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    return result
