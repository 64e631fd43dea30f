"""Scoring rows with a model: the one function online Predict and batch scoring share.

`score_frame(booster, spec, frame, explain)` takes raw rows (a DataFrame as
`pandas.read_csv` or an Arrow record batch's `to_pandas()` gives them) and
returns the model's output (`prediction`, `probability_<class>`), the trust
flags of every row and, when asked, the per-feature contributions. Bad values
raise `pyfunc_model.InvalidModelInput` with a reason code, the column and the
rows, before anything is scored.

Trust flags say where a row is unlike the training data, from what the model
kept of it (`spec["ranges"]` and each categorical feature's levels):

- `unseen_category`: a text value the column never held in training (the
  model scores it as a missing value);
- `out_of_range`: a number below the column's smallest or above its largest
  training value (trees extrapolate flat: the prediction is the edge's);
- `all_missing`: every feature of the row is missing (the prediction is the
  model's prior). Flagged, not refused: one empty row must not fail a call or
  a batch of a million rows, and the caller decides what to do with it.

A model trained before flags existed has no `ranges`: its rows are never
flagged (its categories alone would flag unseen values but not ranges, a half
answer that reads as "nothing unusual").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from services.training.model import pyfunc_model
from services.training.model.pyfunc_model import FeatureSpec

UNSEEN_CATEGORY = "unseen_category"
OUT_OF_RANGE = "out_of_range"
ALL_MISSING = "all_missing"

BoolArray = np.ndarray[Any, np.dtype[np.bool_]]


@dataclass(frozen=True)
class FlagCounts:
    """Rows by flag; `flagged_rows` have at least one."""

    flagged_rows: int = 0
    unseen_category_rows: int = 0
    out_of_range_rows: int = 0
    all_missing_rows: int = 0

    def __add__(self, other: FlagCounts) -> FlagCounts:
        """Counts of two batches together (batch scoring adds them up)."""
        return FlagCounts(
            self.flagged_rows + other.flagged_rows,
            self.unseen_category_rows + other.unseen_category_rows,
            self.out_of_range_rows + other.out_of_range_rows,
            self.all_missing_rows + other.all_missing_rows,
        )


@dataclass(frozen=True)
class TrustFlags:
    """Flags of a batch of rows, column by column (masks over the rows)."""

    rows: int
    unseen_category: dict[str, BoolArray]
    out_of_range: dict[str, BoolArray]
    all_missing: BoolArray

    def flagged(self) -> BoolArray:
        """Rows with at least one flag."""
        any_flag = self.all_missing.copy()
        for mask in (*self.unseen_category.values(), *self.out_of_range.values()):
            any_flag |= mask
        return any_flag

    def row_flags(self, row: int) -> list[tuple[str, str]]:
        """One row's flags as (kind, column); the column is empty for `all_missing`."""
        found = [(UNSEEN_CATEGORY, name) for name, m in self.unseen_category.items() if m[row]]
        found += [(OUT_OF_RANGE, name) for name, m in self.out_of_range.items() if m[row]]
        if self.all_missing[row]:
            found.append((ALL_MISSING, ""))
        return found

    def counts(self) -> FlagCounts:
        return FlagCounts(
            flagged_rows=int(self.flagged().sum()),
            unseen_category_rows=_rows_with_any(self.unseen_category, self.rows),
            out_of_range_rows=_rows_with_any(self.out_of_range, self.rows),
            all_missing_rows=int(self.all_missing.sum()),
        )


def _rows_with_any(masks: dict[str, BoolArray], rows: int) -> int:
    combined = np.zeros(rows, dtype=bool)
    for mask in masks.values():
        combined |= mask
    return int(combined.sum())


@dataclass(frozen=True)
class Explanations:
    """Per-feature contributions to the raw score (LightGBM's exact TreeSHAP).

    For row r and explained class k: base_values[r, k] + contributions[r, k].sum()
    equals raw_scores[r, k]. One class for regression ("") and binary (the
    second class: log-odds), every class for multiclass.
    """

    feature_names: list[str]
    class_names: list[str]
    contributions: np.ndarray[Any, Any]  # (rows, classes, features)
    base_values: np.ndarray[Any, Any]  # (rows, classes)
    raw_scores: np.ndarray[Any, Any]  # (rows, classes)


@dataclass(frozen=True)
class Scored:
    output: pd.DataFrame
    flags: TrustFlags
    explanations: Explanations | None


def score_frame(
    booster: lgb.Booster, spec: FeatureSpec, frame: pd.DataFrame, explain: bool = False
) -> Scored:
    """Predictions, trust flags and (with `explain`) contributions for raw rows."""
    features = pyfunc_model.coerce_features(frame, spec)
    output = pyfunc_model.predict_frame(booster, spec, features)
    flags = trust_flags(frame, features, spec)
    explanations = explain_rows(booster, spec, features) if explain else None
    return Scored(output=output, flags=flags, explanations=explanations)


def trust_flags(frame: pd.DataFrame, features: pd.DataFrame, spec: FeatureSpec) -> TrustFlags:
    """Flags of raw rows (`frame`) against the training data, from their features."""
    rows = len(features)
    ranges: dict[str, list[float]] | None = spec.get("ranges")
    if ranges is None:  # trained before flags existed
        return TrustFlags(rows, {}, {}, np.zeros(rows, dtype=bool))
    unseen: dict[str, BoolArray] = {}
    outside: dict[str, BoolArray] = {}
    all_missing = np.ones(rows, dtype=bool)
    for feature in spec["features"]:
        name = feature["name"]
        given = given_values(frame[name])
        all_missing &= ~given
        if feature["kind"] == pyfunc_model.CATEGORICAL:
            mask = given & features[name].isna().to_numpy()
            if mask.any():
                unseen[name] = mask
        elif feature["kind"] == pyfunc_model.NUMERIC and name in ranges:
            low, high = ranges[name]
            values = features[name].to_numpy(dtype="float64")
            with np.errstate(invalid="ignore"):
                mask = (values < low) | (values > high)
            if mask.any():
                outside[name] = mask
    return TrustFlags(rows, unseen, outside, all_missing)


def given_values(values: pd.Series[Any]) -> BoolArray:
    """Rows where the caller gave a value: not null, not NaN, not blank text."""
    present = np.array(values.notna().to_numpy(), dtype=bool)  # a copy: pandas' may be read-only
    if values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) not in (
        "floating",
        "integer",
        "mixed-integer-float",
        "boolean",
        "empty",
    ):  # only text can be blank
        blank = values.map(lambda value: isinstance(value, str) and not value.strip())
        present &= ~blank.to_numpy(dtype=bool)
    return present


def training_ranges(features: pd.DataFrame, spec: FeatureSpec) -> dict[str, list[float]]:
    """Each numeric feature's smallest and largest training value, kept in the spec."""
    ranges: dict[str, list[float]] = {}
    for feature in spec["features"]:
        if feature["kind"] != pyfunc_model.NUMERIC:
            continue
        values = features[feature["name"]]
        if values.notna().any():
            ranges[feature["name"]] = [float(values.min()), float(values.max())]
    return ranges


def explain_rows(
    booster: lgb.Booster,
    spec: FeatureSpec,
    features: pd.DataFrame | np.ndarray[Any, Any],
    **predict_options: Any,
) -> Explanations:
    """Contributions of a feature matrix (`coerce_features`' DataFrame, or the fast
    path's float64 matrix in the model's column order)."""
    names = pyfunc_model.feature_names(spec)
    width = len(names) + 1  # the features, then the base value
    contrib = np.asarray(
        booster.predict(features, pred_contrib=True, **predict_options), dtype="float64"
    )
    raw = np.asarray(booster.predict(features, raw_score=True, **predict_options), dtype="float64")
    rows = len(features)
    classes = contrib.shape[1] // width
    by_class = contrib.reshape(rows, classes, width)
    if spec["task"] == pyfunc_model.REGRESSION:
        class_names = [""]
    else:
        labels = [pyfunc_model.label_text(label) for label in spec["class_labels"]]
        class_names = labels[-1:] if spec["task"] == pyfunc_model.BINARY else labels
    return Explanations(
        feature_names=names,
        class_names=class_names,
        contributions=by_class[:, :, :-1],
        base_values=by_class[:, :, -1],
        raw_scores=raw.reshape(rows, classes),
    )
