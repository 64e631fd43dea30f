"""modelyard's MLflow model: a LightGBM booster and the preprocessing it was trained with.

This file is logged with every model as MLflow "model from code": MLflow runs
it wherever the model is loaded (`mlflow.pyfunc.load_model(...)`), so it imports
only lightgbm, pandas, numpy and mlflow, never the rest of modelyard. The
Trainer imports the same functions, so that rows are turned into features the
same way at training time, in TrainerService.Predict and in a user's notebook.

Artifacts: `booster` (LightGBM model.txt, saved at the best iteration) and
`preprocessing` (JSON, see `FeatureSpec` below): feature columns with their
kind (numeric, boolean, categorical with its levels, datetime with how its
text is written), class labels, dropped columns. Input: raw rows, as
`pandas.read_csv` gives them (text columns as str/object). Numbers in text
form are parsed, categories unseen in training become missing values, dates
and times become their parts (year, month, day, day of week, hour for
timestamps, and days since 1970-01-01), parsed from text written the way the
training data wrote them (ISO 8601, or a pattern such as `%d/%m/%Y`), extra
columns are ignored. Output: a DataFrame with a
`prediction` column (class label or value) and, for classification, one
`probability_<class>` column per class.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Container
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import mlflow.models
import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel

FORMAT_VERSION = 1
BOOSTER_ARTIFACT = "booster"
PREPROCESSING_ARTIFACT = "preprocessing"

NUMERIC = "numeric"
BOOLEAN = "boolean"
CATEGORICAL = "categorical"
DATETIME = "datetime"

ISO_8601 = "ISO 8601"
DATE_PARTS = ("year", "month", "day", "dayofweek")
TIME_PARTS = ("hour",)
ELAPSED_DAYS = "elapsed_days"
_EPOCH = pd.Timestamp("1970-01-01")

BINARY = "binary"
MULTICLASS = "multiclass"
REGRESSION = "regression"

PREDICTION_COLUMN = "prediction"
PROBABILITY_PREFIX = "probability_"

_TRUE_TEXT = frozenset({"true", "t", "yes", "y", "1", "1.0"})
_FALSE_TEXT = frozenset({"false", "f", "no", "n", "0", "0.0"})
_ROWS_NAMED_IN_ERRORS = 5

# The preprocessing spec, as stored in the `preprocessing` artifact:
# {"format_version": 1, "task": "binary" | "multiclass" | "regression",
#  "target_column": str,
#  "features": [{"name": str, "kind": "numeric" | "boolean" | "categorical" | "datetime",
#                "categories": [str, ...]  (categorical only),
#                "format": "ISO 8601" | strftime pattern, "parts": [str, ...] (datetime only:
#                the model columns are "<name>__<part>")}],
#  "class_labels": [label, ...]  (classification: typed JSON values, model order),
#  "dropped_columns": [{"name": str, "reason": str}],
#  "ranges": {name: [min, max]}  (numeric features' training range; models trained
#                                before trust flags existed have no "ranges")}
FeatureSpec = dict[str, Any]


# Reason codes of Predict's errors. This file stands alone (MLflow loads it without the
# rest of the Trainer), so it spells them itself; services/training/reasons.py has the
# same values and tests/test_reasons.py checks they agree.
COLUMNS_MISSING = "PREDICT_COLUMNS_MISSING"
VALUE_INVALID = "PREDICT_VALUE_INVALID"
VALUE_NOT_FINITE = "PREDICT_VALUE_NOT_FINITE"


class InvalidModelInput(ValueError):
    """Rows the model cannot score; `reason` is a stable code, `column` and `rows` say where."""

    def __init__(
        self, reason: str, message: str, column: str = "", rows: tuple[int, ...] = ()
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.column = column
        self.rows = rows


def load_spec(path: str | Path) -> FeatureSpec:
    spec: FeatureSpec = json.loads(Path(path).read_text())
    if spec.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported preprocessing format {spec.get('format_version')!r}")
    return spec


def input_names(spec: FeatureSpec) -> list[str]:
    """The columns a caller passes: one for each feature."""
    return [feature["name"] for feature in spec["features"]]


def feature_names(spec: FeatureSpec) -> list[str]:
    """The model's columns: a datetime feature is several, one for each of its parts."""
    names: list[str] = []
    for feature in spec["features"]:
        if feature["kind"] == DATETIME:
            names.extend(part_column(feature["name"], part) for part in feature["parts"])
        else:
            names.append(feature["name"])
    return names


def part_column(name: str, part: str) -> str:
    return f"{name}__{part}"


def datetime_parts(timestamp: bool) -> list[str]:
    """The parts a date (or a timestamp, with its hour) becomes."""
    return [*DATE_PARTS, *(TIME_PARTS if timestamp else ()), ELAPSED_DAYS]


def coerce_features(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """The model's feature matrix from raw rows; InvalidModelInput names what is wrong."""
    require_columns(frame.columns, spec)
    columns: dict[str, pd.Series[Any]] = {}
    for feature in spec["features"]:
        columns.update(coerce_column(frame[feature["name"]].reset_index(drop=True), feature))
    return pd.DataFrame(columns, copy=False)


def require_columns(given: Container[str], spec: FeatureSpec) -> None:
    """COLUMNS_MISSING naming every input column the rows lack."""
    missing = [name for name in input_names(spec) if name not in given]
    if missing:
        raise InvalidModelInput(
            COLUMNS_MISSING,
            f"missing column(s): {', '.join(missing)}",
            column=",".join(missing),
        )


def coerce_column(values: pd.Series[Any], feature: dict[str, Any]) -> dict[str, pd.Series[Any]]:
    """One input column as the model column(s) it becomes (a date is several)."""
    name = feature["name"]
    if feature["kind"] == NUMERIC:
        return {name: _numeric(values, name)}
    if feature["kind"] == BOOLEAN:
        return {name: _boolean(values, name)}
    if feature["kind"] == DATETIME:
        return _datetime_columns(values, feature)
    return {name: _categorical(values, feature["categories"])}


def predict_frame(booster: lgb.Booster, spec: FeatureSpec, features: pd.DataFrame) -> pd.DataFrame:
    """Predictions (and class probabilities) for a feature matrix from `coerce_features`."""
    raw = np.asarray(booster.predict(features))
    if spec["task"] == REGRESSION:
        return pd.DataFrame({PREDICTION_COLUMN: raw.astype("float64")})
    probabilities = class_probabilities(raw, spec["task"])
    labels = spec["class_labels"]
    chosen = probabilities.argmax(axis=1)
    predictions = pd.Series(np.asarray(labels, dtype=object)[chosen]).infer_objects()
    output: dict[str, Any] = {PREDICTION_COLUMN: predictions}
    for index, label in enumerate(labels):
        output[f"{PROBABILITY_PREFIX}{label_text(label)}"] = probabilities[:, index]
    return pd.DataFrame(output)


def class_probabilities(raw: np.ndarray[Any, Any], task: str) -> np.ndarray[Any, Any]:
    """One column per class: LightGBM's binary output is P(second class) only."""
    if task == BINARY:
        positive = raw.reshape(-1)
        return np.column_stack([1.0 - positive, positive])
    return raw.reshape(raw.shape[0], -1)


def label_text(label: Any) -> str:
    """A class label as text: the class names of the job record and Predict."""
    if isinstance(label, bool):
        return "true" if label else "false"
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label)


def _numeric(values: pd.Series[Any], name: str) -> pd.Series[Any]:
    """Numbers; a float NaN in a frame is pandas' missing value, an infinity is refused."""
    numeric_objects = values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) in (
        "floating",
        "integer",
        "mixed-integer-float",
        "empty",
    )
    if (
        numeric_objects  # JSON numbers and nulls (Predict's rows): no text to parse
        or pd.api.types.is_bool_dtype(values.dtype)
        or pd.api.types.is_numeric_dtype(values.dtype)
    ):
        numbers = values.astype("float64")
        _refuse_not_finite(values, pd.Series(np.isinf(numbers.to_numpy())), name)
        return numbers
    text = values.astype("object").where(values.notna(), None)
    blank = text.map(lambda value: isinstance(value, str) and not value.strip()).astype(bool)
    parsed = pd.to_numeric(text.where(~blank, None), errors="coerce").astype("float64")
    # "NaN" and "Infinity" written as text are refused alike: neither is a finite number,
    # and reading one as a missing value would score a row the caller did not send.
    spelled = text.map(_is_not_finite_text).astype(bool)
    _refuse_not_finite(values, pd.Series(np.isinf(parsed.to_numpy())) | spelled, name)
    _refuse_unparsed(values, parsed.isna() & values.notna() & ~blank, name, "a number")
    return parsed


_NOT_FINITE_TEXT = frozenset({"nan", "inf", "infinity"})


def _is_not_finite_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lstrip("+-").lower() in _NOT_FINITE_TEXT


def _refuse_not_finite(values: pd.Series[Any], invalid: pd.Series[Any], name: str) -> None:
    if not bool(invalid.any()):
        return
    rows = tuple(int(row) for row in np.flatnonzero(invalid.to_numpy())[:_ROWS_NAMED_IN_ERRORS])
    raise InvalidModelInput(
        VALUE_NOT_FINITE,
        f"column {name!r} expects a finite number; got {values.iloc[rows[0]]!r} at row index "
        + ", ".join(str(row) for row in rows)
        + " (write a missing value as null)",
        column=name,
        rows=rows,
    )


def _boolean(values: pd.Series[Any], name: str) -> pd.Series[Any]:
    if pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.is_numeric_dtype(values.dtype):
        as_float = values.astype("float64")
        invalid = as_float.notna() & ~as_float.isin([0.0, 1.0])
        _refuse_unparsed(values, invalid, name, "true or false")
        return as_float
    parsed = values.map(_boolean_value, na_action="ignore").astype("float64")
    _refuse_unparsed(values, parsed.isna() & values.notna(), name, "true or false")
    return parsed


def _boolean_value(value: Any) -> float:
    if isinstance(value, bool | np.bool_):
        return 1.0 if value else 0.0
    text = str(value).strip().lower()
    if text in _TRUE_TEXT:
        return 1.0
    if text in _FALSE_TEXT:
        return 0.0
    if not text:
        return math.nan
    return math.nan


def _datetime_columns(values: pd.Series[Any], feature: dict[str, Any]) -> dict[str, Any]:
    """A date or time column as the numbers the model takes, one column per part."""
    moments = _moments(values, feature["name"], feature.get("format", ISO_8601))
    return {
        part_column(feature["name"], part): _part(moments, part).astype("float64")
        for part in feature["parts"]
    }


def _part(moments: pd.Series[Any], part: str) -> pd.Series[Any]:
    if part == ELAPSED_DAYS:
        elapsed: pd.Series[Any] = (moments - _EPOCH).dt.total_seconds() / 86400.0
        return elapsed
    # year, month, day, dayofweek (Monday is 0), hour; pandas spells one of them its own way
    values: pd.Series[Any] = getattr(moments.dt, _DATETIME_ATTRIBUTE.get(part, part))
    return values


# A part's name is in saved models' column names; pandas deprecated `dayofweek` for this.
_DATETIME_ATTRIBUTE = {"dayofweek": "day_of_week"}


def _moments(values: pd.Series[Any], name: str, written: str) -> pd.Series[Any]:
    """Timestamps (naive, UTC for values with an offset) from dates, times or their text."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        parsed = pd.to_datetime(values, utc=True)
    else:
        objects = values.astype("object").where(values.notna(), None)
        is_text = objects.map(lambda value: isinstance(value, str))
        blank = objects.map(lambda value: isinstance(value, str) and not value.strip())
        objects = objects.where(~blank.astype(bool), None)
        text_format = "ISO8601" if written == ISO_8601 else written
        parsed = pd.Series(pd.NaT, index=objects.index, dtype="datetime64[ns, UTC]")
        texts = is_text.astype(bool) & objects.notna()
        if texts.any():
            text = objects[texts].str.strip()
            parsed[texts] = pd.to_datetime(text, format=text_format, errors="coerce", utc=True)
            if written != ISO_8601:  # ISO 8601 is unambiguous: taken too
                retry = texts & parsed.isna()
                if retry.any():
                    parsed[retry] = pd.to_datetime(
                        objects[retry].str.strip(), format="ISO8601", errors="coerce", utc=True
                    )
        others = ~texts & objects.notna()
        if others.any():
            parsed[others] = pd.to_datetime(objects[others], errors="coerce", utc=True)
        expected = f"a date or time written {written}" + (
            "" if written == ISO_8601 else " or in ISO 8601"
        )
        _refuse_unparsed(values, parsed.isna() & objects.notna(), name, expected)
    return parsed.dt.tz_localize(None)


@functools.lru_cache(maxsize=256)
def _levels(categories: tuple[str, ...]) -> tuple[pd.CategoricalDtype, dict[str, str]]:
    """A feature's dtype and its levels by lower case, made once per model, not per call."""
    return pd.CategoricalDtype(list(categories)), {c.lower(): c for c in categories}


def _categorical(values: pd.Series[Any], categories: list[str]) -> pd.Series[Any]:
    """The training levels, in training order; anything else becomes missing."""
    dtype, known = _levels(tuple(categories))
    if isinstance(values.dtype, pd.CategoricalDtype):
        # Work on the few categories, not on every row.
        texts = [_category_text(level, categories, known) for level in values.cat.categories]
        if len(set(texts)) == len(texts):
            return values.cat.rename_categories(texts).cat.set_categories(categories)
        values = values.astype("object")
    if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
        values = values.map(
            lambda value: _category_text(value, categories, known), na_action="ignore"
        )
    # Unknown levels become missing before the cast: pandas refuses to drop them itself.
    return values.where(values.isin(categories)).astype(dtype)


def _category_text(value: Any, categories: list[str], known: dict[str, str]) -> str:
    """A value as the text the CSV held: pandas may have parsed '7' as 7.0 or 'TRUE' as True."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        text = "true" if value else "false"
    elif isinstance(value, float | np.floating) and float(value).is_integer():
        text = str(int(value))
    else:
        text = str(value)
    return text if text in categories else known.get(text.lower(), text)


def _refuse_unparsed(
    values: pd.Series[Any], invalid: pd.Series[Any], name: str, expected: str
) -> None:
    if not bool(invalid.any()):
        return
    rows = tuple(int(row) for row in np.flatnonzero(invalid.to_numpy())[:_ROWS_NAMED_IN_ERRORS])
    example = values.iloc[rows[0]]
    raise InvalidModelInput(
        VALUE_INVALID,
        f"column {name!r} expects {expected}; got {example!r} at row index "
        + ", ".join(str(row) for row in rows),
        column=name,
        rows=rows,
    )


class ModelyardModel(PythonModel):
    """The pyfunc MLflow loads: coerce raw rows, predict with the booster."""

    booster: lgb.Booster
    spec: FeatureSpec

    def load_context(self, context: Any) -> None:
        self.booster = lgb.Booster(model_file=context.artifacts[BOOSTER_ARTIFACT])
        self.spec = load_spec(context.artifacts[PREPROCESSING_ARTIFACT])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        return predict_frame(self.booster, self.spec, coerce_features(model_input, self.spec))


# MLflow loads this file as model code and reads the model it sets. The Trainer
# imports the module for its functions only and sets nothing.
if __name__ != "services.training.model.pyfunc_model":
    mlflow.models.set_model(ModelyardModel())
