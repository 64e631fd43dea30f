"""Which columns become features, and of what kind.

Numbers stay numbers (missing values stay missing), booleans become 0/1, text
becomes a pandas `category` with its levels sorted (LightGBM's native
categorical splits), dates and timestamps become their year, month, day, day
of week, hour (timestamps) and days since 1970-01-01. Left out, with why:
columns with no value (`all_null`), a single value (`constant`), identifiers
(`id_like`) and the row numbers a spreadsheet or data-frame export adds
(`row_number`, as the Dataset service flags them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pandas as pd

from services.training.model import pyfunc_model
from services.training.model.pyfunc_model import FeatureSpec

ID_LIKE_DISTINCT_SHARE = 0.9
INPUT_EXAMPLE_ROWS = 5
# Fewer rows than this cannot tell an identifier from a feature.
MIN_ROWS_FOR_ID = 10
_ID_NAME = re.compile(
    r"(^|[^a-z0-9])(id|uuid|guid|key|index|idx|number|num|no)$|^id[^a-z]", re.IGNORECASE
)


class ColumnType(StrEnum):
    """Column types as the Dataset service infers them (Column.DataType)."""

    INTEGER = "INTEGER"
    FLOAT = "FLOAT"
    BOOLEAN = "BOOLEAN"
    STRING = "STRING"
    DATE = "DATE"
    TIMESTAMP = "TIMESTAMP"
    ALL_NULL = "ALL_NULL"


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: ColumnType
    # The Dataset service's judgement that nearly every value is distinct.
    id_like: bool = False
    # The Dataset service's judgement that the column numbers the rows (1..n or 0..n-1).
    row_number: bool = False
    # DATE and TIMESTAMP: how the text was written ("ISO 8601" or a strftime pattern).
    date_format: str = pyfunc_model.ISO_8601


def select_features(
    frame: pd.DataFrame, columns: list[ColumnInfo], target: str
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Feature specs in column order, and the columns left out with why."""
    features: list[dict[str, Any]] = []
    dropped: list[tuple[str, str]] = []
    for column in columns:
        if column.name == target:
            continue
        why = "row_number" if column.row_number else _reason_from_type(column.type)
        if why is None and column.name not in frame.columns:
            why = "not_read"
        if why is None:
            why = _reason_to_drop(frame[column.name], column)
        if why:
            dropped.append((column.name, why))
        elif column.type == ColumnType.STRING:
            levels = _levels(frame[column.name])
            features.append(
                {"name": column.name, "kind": pyfunc_model.CATEGORICAL, "categories": levels}
            )
        elif column.type == ColumnType.BOOLEAN:
            features.append({"name": column.name, "kind": pyfunc_model.BOOLEAN})
        elif column.type in (ColumnType.DATE, ColumnType.TIMESTAMP):
            features.append(datetime_feature(column))
        else:
            features.append({"name": column.name, "kind": pyfunc_model.NUMERIC})
    return features, dropped


def datetime_feature(column: ColumnInfo) -> dict[str, Any]:
    """A DATE or TIMESTAMP column's feature: its parts, parsed as the file wrote it."""
    return {
        "name": column.name,
        "kind": pyfunc_model.DATETIME,
        "format": column.date_format or pyfunc_model.ISO_8601,
        "parts": pyfunc_model.datetime_parts(column.type == ColumnType.TIMESTAMP),
    }


def _reason_from_type(column_type: ColumnType) -> str | None:
    if column_type == ColumnType.ALL_NULL:
        return "all_null"
    return None


def _reason_to_drop(values: pd.Series[Any], column: ColumnInfo) -> str | None:
    if not bool(values.notna().any()):
        return "all_null"
    present = int(values.notna().sum())
    if column.type in (ColumnType.INTEGER, ColumnType.FLOAT):
        numbers = values.astype("float64")
        if numbers.min() == numbers.max():
            return "constant"
        if column.type == ColumnType.INTEGER and _integer_id(numbers, column.name, present):
            return "id_like"
        return None
    if column.type in (ColumnType.DATE, ColumnType.TIMESTAMP):
        return "constant" if values.nunique(dropna=True) <= 1 else None
    distinct = _distinct_count(values)
    if distinct <= 1:
        return "constant"
    if column.type == ColumnType.STRING and (
        column.id_like or distinct >= ID_LIKE_DISTINCT_SHARE * present
    ):
        return "id_like"
    return None


def _integer_id(numbers: pd.Series[Any], name: str, present: int) -> bool:
    """Every value distinct, and named like an identifier or counting up the rows."""
    if present < MIN_ROWS_FOR_ID:
        return False
    values = numbers.dropna()
    counter = values.is_monotonic_increasing or values.is_monotonic_decreasing
    if not (counter or identifier_name(name)):
        return False  # decided without counting distinct values (a hash table of every row)
    return bool(numbers.nunique() == present)


def identifier_name(name: str) -> bool:
    """Named like an identifier: `id`, `*_id`, `key`, `index`, `*_number`, ..."""
    return bool(_ID_NAME.search(name.strip()))


def _distinct_count(values: pd.Series[Any]) -> int:
    if isinstance(values.dtype, pd.CategoricalDtype):
        return len(values.cat.remove_unused_categories().cat.categories)
    return int(values.nunique(dropna=True))


def _levels(values: pd.Series[Any]) -> list[str]:
    if isinstance(values.dtype, pd.CategoricalDtype):
        present = values.cat.remove_unused_categories().cat.categories
        return sorted(str(level) for level in present)
    return sorted({str(value) for value in values.dropna().unique()})


def raw_example(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """A few rows as a user would pass them: text as text, numbers as numbers."""
    rows = frame[pyfunc_model.input_names(spec)].head(INPUT_EXAMPLE_ROWS).copy()
    for feature in spec["features"]:
        name = feature["name"]
        if feature["kind"] == pyfunc_model.CATEGORICAL:
            rows[name] = rows[name].astype("object").where(rows[name].notna(), None)
            rows[name] = rows[name].map(lambda value: None if value is None else str(value))
        elif feature["kind"] == pyfunc_model.NUMERIC:
            rows[name] = rows[name].astype("float64")
        elif feature["kind"] == pyfunc_model.DATETIME:  # as ISO text: what a CSV holds
            rows[name] = rows[name].map(_iso_text, na_action="ignore")
    return rows.reset_index(drop=True)


def _iso_text(value: Any) -> str:
    return str(value.isoformat()) if hasattr(value, "isoformat") else str(value)


def columns_from_frame(frame: pd.DataFrame) -> list[ColumnInfo]:
    """Column types of a DataFrame read with pandas, as the Dataset service would infer them.

    For tests and benchmarks that train on a CSV without the Dataset service.
    """
    columns: list[ColumnInfo] = []
    for name in frame.columns:
        dtype = frame[name].dtype
        if not bool(frame[name].notna().any()):
            kind = ColumnType.ALL_NULL
        elif pd.api.types.is_bool_dtype(dtype):
            kind = ColumnType.BOOLEAN
        elif pd.api.types.is_integer_dtype(dtype):
            kind = ColumnType.INTEGER
        elif pd.api.types.is_float_dtype(dtype):
            whole = frame[name].dropna().mod(1).eq(0).all()
            kind = ColumnType.INTEGER if whole else ColumnType.FLOAT
        elif pd.api.types.is_datetime64_any_dtype(dtype):
            kind = ColumnType.TIMESTAMP
        else:
            kind = ColumnType.STRING
        columns.append(ColumnInfo(str(name), kind))
    return columns
