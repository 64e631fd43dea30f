"""Online Predict's fast path: a request's values straight into LightGBM's feature matrix.

`scoring.score_frame` works on a DataFrame, which suits batch scoring's record
batches of 65,536 rows; for one Predict row it spent most of its time in pandas
(a Series, a type inference and a cast for each of the columns, for a fraction
of a millisecond of trees). `RowScorer` is made once per loaded model
(`serving/cache.py`) and decides ahead what each column needs: the category
codes as a dict in the booster's own level order, the training range, the
matrix column it fills. A call turns each column's values (a list, as the
request held them) into float64 columns of one matrix and calls the booster on
it, on one thread for a request's rows: concurrent requests use the cores, and
fanning a few rows out over OpenMP threads costs more than it saves.

The common values take the fast way: numbers and nulls in a numeric column,
booleans and nulls in a boolean one, text and nulls in a categorical one. Any
other column (text in a numeric column, numbers in a categorical one, every
date) is converted by the DataFrame path's own function for that column
(`pyfunc_model.coerce_column`), so every value is read, and every bad value
refused, as `score_frame` reads or refuses it: same predictions, flags,
contributions and errors (tests/training/test_training_row_scoring.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from services.training.model import pyfunc_model, scoring
from services.training.model.pyfunc_model import FeatureSpec
from services.training.model.scoring import BoolArray, Explanations, TrustFlags

# Up to this many rows a call predicts on one thread (Predict's rows per call are
# capped below it by `max_predict_rows`' default).
SINGLE_THREAD_ROWS = 10_000

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
# A column's values, one per row: as the request held them, or (a column-wise
# request's numbers-only column) a float64 array already checked to be finite.
ColumnValues = list[Any] | FloatArray


@dataclass(frozen=True)
class _Column:
    """One input column and what was decided about it when the model was loaded."""

    feature: dict[str, Any]
    first: int  # its (first) column in the feature matrix
    width: int  # matrix columns it fills: a date fills one per part
    codes: dict[str, float] = field(default_factory=dict)  # categorical: level → code
    training_range: tuple[float, float] | None = None  # numeric: flagged outside it

    @property
    def name(self) -> str:
        name: str = self.feature["name"]
        return name

    @property
    def kind(self) -> str:
        kind: str = self.feature["kind"]
        return kind


@dataclass(frozen=True)
class RowScores:
    """A request's predictions: per row the class label or value, the class
    probabilities (classification; rows by classes), trust flags, contributions."""

    values: list[Any]
    probabilities: FloatArray | None
    flags: TrustFlags
    explanations: Explanations | None


class RowScorer:
    """Scores rows given column by column (`{column: [value per row]}`)."""

    def __init__(self, booster: lgb.Booster, spec: FeatureSpec) -> None:
        self._booster = booster
        self._spec = spec
        self._columns = _plan(booster, spec)
        self._width = len(pyfunc_model.feature_names(spec))
        self._flagging = spec.get("ranges") is not None  # trained before flags existed: none

    def score(
        self, columns: Mapping[str, ColumnValues], rows: int, explain: bool = False
    ) -> RowScores:
        """Like `scoring.score_frame` on a DataFrame of these columns (object dtype).

        A column is a list of values, or a float64 array of finite numbers (a
        column-wise request's numbers-only column, already checked)."""
        pyfunc_model.require_columns(columns, self._spec)
        matrix = np.empty((rows, self._width), dtype="float64")
        unseen: dict[str, BoolArray] = {}
        outside: dict[str, BoolArray] = {}
        all_missing = np.ones(rows, dtype=bool)
        for column in self._columns:
            given = _fill(column, columns[column.name], matrix)
            all_missing &= ~given
            if column.kind == pyfunc_model.CATEGORICAL:
                mask = given & np.isnan(matrix[:, column.first])
                if mask.any():
                    unseen[column.name] = mask
            elif column.training_range is not None:
                low, high = column.training_range
                numbers = matrix[:, column.first]
                with np.errstate(invalid="ignore"):
                    mask = (numbers < low) | (numbers > high)
                if mask.any():
                    outside[column.name] = mask
        if self._flagging:
            flags = TrustFlags(rows, unseen, outside, all_missing)
        else:
            flags = TrustFlags(rows, {}, {}, np.zeros(rows, dtype=bool))
        options: dict[str, Any] = {"num_threads": 1} if rows <= SINGLE_THREAD_ROWS else {}
        raw = np.asarray(self._booster.predict(matrix, **options))
        explanations = (
            scoring.explain_rows(self._booster, self._spec, matrix, **options) if explain else None
        )
        task = self._spec["task"]
        if task == pyfunc_model.REGRESSION:
            return RowScores(raw.astype("float64").tolist(), None, flags, explanations)
        probabilities = pyfunc_model.class_probabilities(raw, task).astype("float64")
        labels = self._spec["class_labels"]
        values = [labels[chosen] for chosen in probabilities.argmax(axis=1).tolist()]
        return RowScores(values, probabilities, flags, explanations)


def _plan(booster: lgb.Booster, spec: FeatureSpec) -> list[_Column]:
    """Each input column's place in the matrix, its category codes and its range."""
    # LightGBM codes a category by its position in the levels it was trained with
    # (`pandas_categorical`, one list per categorical column in order); a booster
    # without them takes the DataFrame's own levels, the spec's.
    trained_levels: list[list[Any]] | None = booster.pandas_categorical
    ranges: dict[str, list[float]] = spec.get("ranges") or {}
    columns: list[_Column] = []
    first = 0
    categorical = 0
    for feature in spec["features"]:
        kind = feature["kind"]
        width = len(feature["parts"]) if kind == pyfunc_model.DATETIME else 1
        codes: dict[str, float] = {}
        training_range = None
        if kind == pyfunc_model.CATEGORICAL:
            levels = trained_levels[categorical] if trained_levels else feature["categories"]
            categorical += 1
            codes = {level: float(code) for code, level in enumerate(levels)}
        elif kind == pyfunc_model.NUMERIC and feature["name"] in ranges:
            low, high = ranges[feature["name"]]
            training_range = (float(low), float(high))
        columns.append(_Column(feature, first, width, codes, training_range))
        first += width
    return columns


def _fill(column: _Column, values: ColumnValues, matrix: FloatArray) -> BoolArray:
    """The column's matrix column(s) from its values; returns where a value was given."""
    target = matrix[:, column.first]
    if isinstance(values, np.ndarray):
        if column.kind == pyfunc_model.NUMERIC:
            target[:] = values
            every: BoolArray = np.ones(len(values), dtype=bool)
            return every
        return _fill(column, values.tolist(), matrix)  # numbers for another kind: as a list
    if column.kind == pyfunc_model.NUMERIC and all(_is_number(value) for value in values):
        numbers = np.array(values, dtype="float64")  # None → NaN: LightGBM's missing value
        if not np.isinf(numbers).any():  # else the general way names and refuses it
            target[:] = numbers
            given: BoolArray = ~np.isnan(numbers)
            return given
    elif column.kind == pyfunc_model.BOOLEAN and all(_is_bool(value) for value in values):
        target[:] = [math.nan if value is None else float(value) for value in values]
        return np.array([value is not None for value in values], dtype=bool)
    elif column.kind == pyfunc_model.CATEGORICAL and all(_is_text(value) for value in values):
        codes = column.codes
        target[:] = [math.nan if value is None else codes.get(value, math.nan) for value in values]
        return np.array([value is not None and bool(value.strip()) for value in values], dtype=bool)
    return _fill_as_frame(column, values, matrix)


def _fill_as_frame(column: _Column, values: list[Any], matrix: FloatArray) -> BoolArray:
    """Any other column, by the DataFrame path's conversion of that column."""
    series = pd.Series(values, dtype=object)
    converted = pyfunc_model.coerce_column(series, column.feature)
    for offset, model_column in enumerate(converted.values()):
        if column.kind == pyfunc_model.CATEGORICAL:
            codes = column.codes
            levels = model_column.astype(object).tolist()
            matrix[:, column.first] = [
                codes.get(level, math.nan) if isinstance(level, str) else math.nan
                for level in levels
            ]
        else:
            matrix[:, column.first + offset] = model_column.to_numpy(dtype="float64")
    given: BoolArray = scoring.given_values(series)
    return given


def _is_number(value: Any) -> bool:
    return value is None or type(value) is float or type(value) is int


def _is_bool(value: Any) -> bool:
    return value is None or type(value) is bool


def _is_text(value: Any) -> bool:
    return value is None or type(value) is str
