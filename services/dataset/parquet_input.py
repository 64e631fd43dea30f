"""Parquet uploads: validated, profiled, and kept as they are when they already fit.

The file is opened from a local copy (Parquet is read from its end), its
schema checked against the limits, its header repaired like any other, and
every row group read once for the profile. When its names needed no repair,
its types are already the contract's and its row groups are of a size
`ReadDataset` reads comfortably, the uploaded file itself is the dataset's
typed copy ("stored as is"); otherwise a typed copy is written from it, row
group by row group, as for text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from runtime.errors import invalid_argument
from services.dataset import reasons
from services.dataset.convert import (
    Conversion,
    ConversionJob,
    ParquetSink,
    check_field_sizes,
)
from services.dataset.headers import repair_header

# A row group kept as is must be small enough for ReadDataset, which reads one at a time.
MAX_KEPT_GROUP_ROWS = 1 << 20
MAX_KEPT_GROUP_BYTES = 256 * 1024 * 1024


@dataclass
class ParquetResult:
    conversion: Conversion
    kept_as_is: bool


def contract_type(arrow_type: pa.DataType) -> pa.DataType | None:
    """The contract's type for a Parquet column's type; None when there is none."""
    if pa.types.is_dictionary(arrow_type):
        return contract_type(arrow_type.value_type)
    if pa.types.is_null(arrow_type) or pa.types.is_boolean(arrow_type):
        return arrow_type
    if pa.types.is_integer(arrow_type):
        return pa.int64()
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return pa.float64()
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pa.string()
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return pa.string()  # text stored as bytes; the cast checks it is UTF-8
    if pa.types.is_date(arrow_type):
        return pa.date32()
    if pa.types.is_timestamp(arrow_type):
        return pa.timestamp("us", tz="UTC" if arrow_type.tz else None)
    if pa.types.is_time(arrow_type):
        return pa.string()
    return None


def _invalid(error: BaseException) -> Exception:
    return invalid_argument(
        reasons.PARQUET_INVALID, f"the Parquet file cannot be read: {str(error)[:200]}"
    )


def convert_parquet(path: Path, job: ConversionJob) -> ParquetResult:
    """Validate and profile the Parquet file at `path`; write a typed copy when needed."""
    try:
        parquet = pq.ParquetFile(path)
        stored = parquet.schema_arrow
    except (pa.ArrowException, OSError, ValueError) as error:
        raise _invalid(error) from None
    header = repair_header(stored.names, True, job.limits.header)
    fields = []
    for name, item in zip(header.names, stored, strict=True):
        wanted = contract_type(item.type)
        if wanted is None:
            raise invalid_argument(
                reasons.COLUMN_TYPE_UNSUPPORTED,
                f"column {item.name[:80]!r} is of type {item.type}; "
                "nested and binary-only types cannot be trained on",
                column=item.name[:200],
            )
        fields.append(pa.field(name, wanted))
    schema = pa.schema(fields)
    kept = _keep_as_is(parquet, stored, schema, header.repairs == [])
    output = ParquetSink(schema, job.options, None if kept else job.open_sink())
    sink = output.writer_sink
    try:
        output.write_all(_groups(parquet, schema, job, whole_groups=kept))
        conversion = output.result(header.repairs)
        if sink is not None:
            sink.commit()
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    return ParquetResult(conversion, kept)


def _keep_as_is(
    parquet: pq.ParquetFile, stored: pa.Schema, schema: pa.Schema, same_names: bool
) -> bool:
    return same_names and _types_match(stored, schema) and _groups_fit(parquet)


def _types_match(stored: pa.Schema, schema: pa.Schema) -> bool:
    return all(item.type == wanted.type for item, wanted in zip(stored, schema, strict=True))


def _groups_fit(parquet: pq.ParquetFile) -> bool:
    metadata = parquet.metadata
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        if group.num_rows > MAX_KEPT_GROUP_ROWS or group.total_byte_size > MAX_KEPT_GROUP_BYTES:
            return False
    return True


def _groups(
    parquet: pq.ParquetFile, schema: pa.Schema, job: ConversionJob, whole_groups: bool
) -> Iterator[pa.Table]:
    rows = job.options.row_group_rows
    for index in range(parquet.num_row_groups):
        job.check_cancelled()
        try:
            table = parquet.read_row_group(index)
        except (pa.ArrowException, OSError, ValueError) as error:
            raise _invalid(error) from None
        table = _typed(table, schema)
        check_field_sizes(table, job.limits.max_field_bytes)
        if whole_groups:
            yield table
            continue
        for start in range(0, table.num_rows, rows):
            yield table.slice(start, rows)


def _typed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = []
    for column, wanted in zip(table.columns, schema, strict=True):
        if column.type != wanted.type:
            try:
                column = pc.cast(column, wanted.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                raise invalid_argument(
                    reasons.COLUMN_TYPE_UNSUPPORTED,
                    f"column {wanted.name[:80]!r} cannot be read as {wanted.type}: "
                    f"{str(error)[:160]}",
                    column=wanted.name[:200],
                ) from None
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)
