"""Column types inferred from every value, the fallback of the first-block fast path.

A pass reads every column as text and narrows, column by column, the types
every value converts to, in the order pyarrow's own inference tries them
(integer, boolean, date, timestamp, float); a column no type fits is checked
against the date patterns of `dates.py`, and is text when none fits either.
The file is then converted with those types; a column that still conflicts
(a reader's corner the patterns did not foresee) becomes text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from services.dataset import dates
from services.dataset.convert import (
    FALSE_VALUES,
    TRUE_VALUES,
    ColumnPlan,
    Conversion,
    ConversionJob,
    CsvBatches,
    TypeConflictError,
    TypePlan,
    check_field_sizes,
    convert_into_new_sink,
)

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
    """The kinds (and date patterns) a column's values, seen so far, all convert to."""

    def __init__(self) -> None:
        self.kinds = list(_KINDS)
        self.dates = dates.DateCandidates()
        self.seen_values = False

    def update(self, column: pa.Array) -> None:
        values = pc.drop_null(column)
        if len(values) == 0:
            return
        self.seen_values = True
        self.kinds = [kind for kind in self.kinds if _accepts(kind, values)]
        if not self.kinds:
            self.dates.update(values)

    def plan(self) -> ColumnPlan:
        if not self.seen_values:
            return ColumnPlan(pa.null())
        if self.kinds:
            return ColumnPlan(self.kinds[0].arrow_type)
        pattern = self.dates.best()
        return ColumnPlan(pa.string(), pattern)


def infer_types(job: ConversionJob, source_names: list[str]) -> TypePlan:
    """Every column's plan, from all its values (read as text)."""
    as_text = TypePlan([ColumnPlan(pa.string()) for _ in source_names])
    with (
        job.open_source() as source,
        CsvBatches(source, job.fmt, job.limits, as_text, source_names) as batches,
    ):
        candidates = [_Candidates() for _ in batches.source_names]
        for batch in batches.raw_batches():
            job.check_cancelled()
            check_field_sizes(batch, job.limits.max_field_bytes)
            for candidate, column in zip(candidates, batch.columns, strict=True):
                candidate.update(column)
        trailing = batches.header.trailing_blank
    return TypePlan(
        [candidate.plan() for candidate in candidates],
        drop_trailing=trailing is not None and not candidates[trailing].seen_values,
    )


def convert_with_inferred_types(job: ConversionJob, source_names: list[str]) -> Conversion:
    """Infer types from every value, then convert; a column that still conflicts becomes text."""
    plan = infer_types(job, source_names)
    for _ in range(len(plan.columns) + 1):
        try:
            return convert_into_new_sink(job, plan, source_names)
        except TypeConflictError as conflict:
            plan = plan.with_text(conflict.index)
    raise AssertionError("every column is text, yet a type conflict remains")


def convert_file(job: ConversionJob) -> Conversion:
    """The fast path (types from the first block), then the fallback when a type conflicts."""
    try:
        return convert_into_new_sink(job, None)
    except TypeConflictError as conflict:
        names = conflict.source_names
    return convert_with_inferred_types(job, names)
