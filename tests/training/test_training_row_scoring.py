"""Predict's fast path (`RowScorer`) against the DataFrame path (`score_frame`).

Both must give the same predictions, probabilities, trust flags, contributions
and errors for the rows a Predict request can hold: the tests build both inputs
from the same JSON-like values, the DataFrame as Predict used to build it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from services.training.fit.pipeline import PipelineConfig, TrainingResult, train_model
from services.training.model import pyfunc_model
from services.training.model.columns import ColumnInfo, ColumnType, columns_from_frame
from services.training.model.row_scoring import RowScorer, RowScores
from services.training.model.scoring import Scored, score_frame
from services.training.model.targets import Task
from tests.training.training_support import messy_frame

CONFIG = PipelineConfig(num_threads=2)


@pytest.fixture(scope="module")
def models() -> dict[str, TrainingResult]:
    """A binary, a multiclass and a regression model of the same messy table."""
    frame = messy_frame().drop(columns=["customer_id", "row_number", "constant"])
    columns = [
        ColumnInfo(c.name, ColumnType.DATE, date_format="%Y-%m-%d") if c.name == "signup" else c
        for c in columns_from_frame(frame)
    ]
    return {
        target: train_model(frame, columns, target, Task.AUTO, {}, CONFIG)
        for target in ("label", "color", "size")
    }


# Every kind of value a request can hold, by column: the columns of all three models.
MESSY_ROWS: list[dict[str, Any]] = [
    {"color": "red", "size": 10.5, "count": 3.0, "signup": "2024-03-01", "flag": True,
     "label": "yes"},
    {"color": "orange", "size": 1e6, "count": -50.0, "signup": "2031-12-31", "flag": False,
     "label": "maybe"},  # unseen categories, numbers out of range
    {"color": None, "size": None, "count": None, "signup": None, "flag": None, "label": None},
    {},  # every key absent: all missing
    {"color": " ", "size": "", "count": "  ", "signup": "", "flag": None, "label": ""},
    {"color": "Red", "size": "12.25", "count": " 7 ", "signup": "2024-02-29T10:30:00",
     "flag": "false", "label": "no", "extra": "ignored"},
    {"color": "blue", "size": 8.0, "count": 19.0, "signup": "2024-06-15", "flag": 1.0,
     "label": "no"},
    {"color": 7.0, "size": 9.0, "count": True, "signup": "2024-01-01", "flag": "yes",
     "label": True},
]  # fmt: skip


def columns_of(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The values of each key, one per row (None where a row lacks the key), as Predict
    reads a request."""
    columns: dict[str, list[Any]] = {}
    for index, row in enumerate(rows):
        for key, value in row.items():
            columns.setdefault(key, [None] * len(rows))[index] = value
    return columns


def frame_of(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The same rows as the DataFrame Predict built before the fast path."""
    return pd.DataFrame.from_records(rows).astype("object")


def both(model: TrainingResult, rows: list[dict[str, Any]], explain: bool) -> tuple[Any, Any]:
    fast = RowScorer(model.booster, model.spec).score(columns_of(rows), len(rows), explain)
    slow = score_frame(model.booster, model.spec, frame_of(rows), explain)
    return fast, slow


def assert_same(fast: RowScores, slow: Scored, spec: dict[str, Any]) -> None:
    assert fast.values == slow.output[pyfunc_model.PREDICTION_COLUMN].tolist()
    if spec["task"] == pyfunc_model.REGRESSION:
        assert fast.probabilities is None
    else:
        names = [pyfunc_model.label_text(label) for label in spec["class_labels"]]
        columns = [f"{pyfunc_model.PROBABILITY_PREFIX}{name}" for name in names]
        assert fast.probabilities is not None
        assert np.array_equal(fast.probabilities, slow.output[columns].to_numpy())
    rows = len(fast.values)
    assert [fast.flags.row_flags(r) for r in range(rows)] == [
        slow.flags.row_flags(r) for r in range(rows)
    ]
    assert fast.flags.counts() == slow.flags.counts()
    assert (fast.explanations is None) == (slow.explanations is None)
    if fast.explanations is not None and slow.explanations is not None:
        assert fast.explanations.feature_names == slow.explanations.feature_names
        assert fast.explanations.class_names == slow.explanations.class_names
        assert np.array_equal(fast.explanations.contributions, slow.explanations.contributions)
        assert np.array_equal(fast.explanations.base_values, slow.explanations.base_values)
        assert np.array_equal(fast.explanations.raw_scores, slow.explanations.raw_scores)


@pytest.mark.parametrize("target", ["label", "color", "size"])
@pytest.mark.parametrize("explain", [False, True])
def test_messy_rows_score_the_same_both_ways(
    models: dict[str, TrainingResult], target: str, explain: bool
) -> None:
    model = models[target]
    rows = [{k: v for k, v in row.items() if k != target} for row in MESSY_ROWS]
    fast, slow = both(model, rows, explain)
    assert_same(fast, slow, model.spec)
    flagged = fast.flags.counts()
    # The rows exercise every flag, so agreeing on them means something.
    assert flagged.unseen_category_rows > 0
    assert flagged.out_of_range_rows > 0
    assert flagged.all_missing_rows == 3  # all null, all absent, all blank


def test_one_row_and_many_rows_score_the_same_both_ways(
    models: dict[str, TrainingResult],
) -> None:
    """Typical rows (numbers, text, dates as text) one at a time and 500 at once."""
    model = models["label"]
    frame = messy_frame(rows=500, seed=11).drop(columns=["label"])
    rows: list[dict[str, Any]] = json.loads(frame.to_json(orient="records"))
    for row in rows[:5]:
        assert_same(*both(model, [row], explain=False), model.spec)
    assert_same(*both(model, rows, explain=True), model.spec)


@pytest.mark.parametrize(
    ("change", "reason", "column"),
    [
        ({"size": "Infinity"}, pyfunc_model.VALUE_NOT_FINITE, "size"),
        ({"size": "NaN"}, pyfunc_model.VALUE_NOT_FINITE, "size"),
        ({"count": "NA"}, pyfunc_model.VALUE_INVALID, "count"),
        ({"flag": "perhaps"}, pyfunc_model.VALUE_INVALID, "flag"),
        ({"flag": 2.0}, pyfunc_model.VALUE_INVALID, "flag"),
        ({"signup": "next tuesday"}, pyfunc_model.VALUE_INVALID, "signup"),
    ],
)
def test_bad_values_are_refused_the_same_both_ways(
    models: dict[str, TrainingResult], change: dict[str, Any], reason: str, column: str
) -> None:
    model = models["label"]
    rows = [{k: v for k, v in row.items() if k != "label"} for row in MESSY_ROWS[:3]]
    rows[2] = {**rows[2], **change}
    with pytest.raises(pyfunc_model.InvalidModelInput) as fast:
        RowScorer(model.booster, model.spec).score(columns_of(rows), len(rows))
    with pytest.raises(pyfunc_model.InvalidModelInput) as slow:
        score_frame(model.booster, model.spec, frame_of(rows))
    assert (fast.value.reason, fast.value.column, fast.value.rows) == (reason, column, (2,))
    assert (slow.value.reason, slow.value.column, slow.value.rows) == (reason, column, (2,))
    assert str(fast.value) == str(slow.value)


def test_a_missing_column_is_named_the_same_both_ways(models: dict[str, TrainingResult]) -> None:
    model = models["label"]
    rows = [{"color": "red", "size": 1.0}]
    with pytest.raises(pyfunc_model.InvalidModelInput) as fast:
        RowScorer(model.booster, model.spec).score(columns_of(rows), 1)
    with pytest.raises(pyfunc_model.InvalidModelInput) as slow:
        score_frame(model.booster, model.spec, frame_of(rows))
    assert fast.value.reason == slow.value.reason == pyfunc_model.COLUMNS_MISSING
    assert fast.value.column == slow.value.column == "count,signup,flag"
