"""Model quality: the platform's pipeline against the original baseline and a trivial model.

    python -m bench.quality

On scikit-learn's bundled datasets (breast cancer, wine, iris with its string
labels, diabetes) and on generated tables with categorical, missing and
ID-like columns, each written to CSV and read back with pandas:

- platform: `services.training.fit.pipeline.train_model` (task detection, native
  categoricals, ID/constant columns dropped, stratified split, early stopping);
- baseline: a faithful copy of the original baseline - every text column
  label-encoded, `LGBMClassifier`/`LGBMRegressor` with 100 trees and learning
  rate 0.1, a binary objective for every classification (so it fails on three
  or more classes);
- trivial: the majority class (its training frequencies as probabilities) or
  the training mean.

All three are scored on the platform's own validation split (the same rows),
with the same metric code. The table shows the task's primary metric (ROC AUC,
macro F1, RMSE) and log loss / MAE next to it. Exit status 1 when the platform
is worse than the baseline where the baseline runs, or not better than the
trivial model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn import datasets
from sklearn.preprocessing import LabelEncoder

from services.training.fit.pipeline import PipelineConfig, evaluate, prepare, train_model
from services.training.model.columns import columns_from_frame
from services.training.model.targets import PRIMARY_METRICS, Task, target_present

CONFIG = PipelineConfig()


# -- datasets ------------------------------------------------------------------------------


def sklearn_frame(name: str, string_labels: bool = False) -> pd.DataFrame:
    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    frame: pd.DataFrame = bunch.frame.copy()
    if string_labels:
        frame["target"] = np.asarray(bunch.target_names)[bunch.target]
    return frame


def messy_binary(rows: int = 5000, seed: int = 11) -> pd.DataFrame:
    """Categoricals that matter, missing values, an ID column and a row counter."""
    rng = np.random.default_rng(seed)
    city = rng.choice([f"city-{i:02d}" for i in range(40)], rows)
    city_effect = {c: rng.normal(0, 1.2) for c in np.unique(city)}
    plan = rng.choice(["free", "basic", "pro", "enterprise"], rows, p=[0.4, 0.3, 0.2, 0.1])
    tenure = rng.gamma(2.0, 12.0, rows)
    spend = rng.lognormal(3, 1, rows)
    spend[rng.random(rows) < 0.15] = np.nan
    tickets = rng.poisson(2, rows).astype(float)
    tickets[rng.random(rows) < 0.1] = np.nan
    score = (
        np.vectorize(city_effect.get)(city)
        + np.select([plan == "free", plan == "enterprise"], [0.8, -1.0], 0.0)
        - tenure / 30
        + np.nan_to_num(tickets, nan=2) * 0.35
        + rng.normal(0, 1, rows)
    )
    churned = np.where(score > np.quantile(score, 0.7), "churned", "stayed").astype(object)
    churned[rng.random(rows) < 0.02] = None
    return pd.DataFrame(
        {
            "customer_id": [f"CUST-{rng.integers(10**9):09d}-{i}" for i in range(rows)],
            "row": np.arange(rows),
            "city": city,
            "plan": plan,
            "tenure_months": tenure.round(1),
            "monthly_spend": spend.round(2),
            "support_tickets": tickets,
            "country": "NL",
            "churn": churned,
        }
    )


def messy_regression(rows: int = 4000, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    district = rng.choice([f"d{i}" for i in range(25)], rows)
    district_price = {d: rng.normal(300, 80) for d in np.unique(district)}
    rooms = rng.integers(1, 7, rows).astype(float)
    area = rooms * 25 + rng.normal(0, 15, rows)
    area[rng.random(rows) < 0.1] = np.nan
    garden = rng.random(rows) < 0.4
    price = (
        np.vectorize(district_price.get)(district)
        + np.nan_to_num(area, nan=80) * 2.5
        + garden * 40
        + rng.normal(0, 30, rows)
    )
    return pd.DataFrame(
        {
            "listing": [f"L{i:06d}" for i in range(rows)],
            "district": district,
            "rooms": rooms,
            "area": area,
            "garden": garden,
            "price": price.round(0),
        }
    )


def messy_multiclass(rows: int = 3000, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    device = rng.choice(["ios", "android", "web", "tv"], rows)
    minutes = rng.exponential(30, rows)
    minutes[rng.random(rows) < 0.1] = np.nan
    age = rng.integers(16, 80, rows).astype(float)
    genre = np.select(
        [
            (device == "tv") | (np.nan_to_num(minutes, nan=30) > 60),
            age < 30,
        ],
        ["drama", "action"],
        "documentary",
    ).astype(object)
    flip = rng.random(rows) < 0.15
    genre[flip] = rng.choice(["drama", "action", "documentary"], flip.sum())
    return pd.DataFrame(
        {
            "session": np.arange(rows),
            "device": device,
            "minutes": minutes,
            "age": age,
            "genre": genre,
        }
    )


@dataclass(frozen=True)
class Case:
    name: str
    frame: Callable[[], pd.DataFrame]
    target: str


CASES = [
    Case("breast_cancer", lambda: sklearn_frame("breast_cancer"), "target"),
    Case("wine", lambda: sklearn_frame("wine"), "target"),
    Case("iris (string labels)", lambda: sklearn_frame("iris", string_labels=True), "target"),
    Case("diabetes", lambda: sklearn_frame("diabetes"), "target"),
    Case("generated churn (cat/missing/id)", messy_binary, "churn"),
    Case("generated prices (cat/missing/id)", messy_regression, "price"),
    Case("generated genres (cat/missing/id)", messy_multiclass, "genre"),
]


# -- the three models --------------------------------------------------------------------


@dataclass
class Scores:
    metrics: dict[str, float] | None
    error: str = ""
    seconds: float = 0.0


def baseline_scores(
    frame: pd.DataFrame,
    target: str,
    task: Task,
    train: np.ndarray[Any, Any],
    valid: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
) -> Scores:
    """The original baseline: label-encode text, 100 trees, binary objective for classes."""
    started = time.perf_counter()
    features = frame.drop(columns=[target]).copy()
    for column in features.columns:
        if not pd.api.types.is_numeric_dtype(features[column]) or pd.api.types.is_bool_dtype(
            features[column]
        ):
            features[column] = LabelEncoder().fit_transform(features[column].astype(str))
    try:
        if task == Task.REGRESSION:
            model: Any = lgb.LGBMRegressor(n_estimators=100, learning_rate=0.1, verbose=-1)
            model.fit(features.iloc[train], labels[train])
            raw = model.predict(features.iloc[valid])
        else:
            model = lgb.LGBMClassifier(
                n_estimators=100, learning_rate=0.1, objective="binary", verbose=-1
            )
            model.fit(features.iloc[train], labels[train])
            raw = model.predict_proba(features.iloc[valid])[:, 1]
    except Exception as error:  # the known failure: binary objective on 3+ classes
        return Scores(None, error=f"{type(error).__name__}: {str(error)[:60]}")
    metrics = evaluate(task, labels[valid], np.asarray(raw))
    return Scores(metrics, seconds=time.perf_counter() - started)


def trivial_scores(
    task: Task, classes: int, train_labels: np.ndarray[Any, Any], valid_labels: np.ndarray[Any, Any]
) -> Scores:
    if task == Task.REGRESSION:
        raw = np.full(len(valid_labels), float(np.mean(train_labels)))
    else:
        frequencies = np.bincount(train_labels, minlength=classes) / len(train_labels)
        majority = np.zeros(classes)
        majority[np.argmax(frequencies)] = 1.0
        # Confident in the majority class, but not infinitely (log loss stays finite).
        blended = 0.98 * majority + 0.02 * frequencies
        raw = np.tile(blended, (len(valid_labels), 1))
        if task == Task.BINARY:
            raw = raw[:, 1]
    return Scores(evaluate(task, valid_labels, raw))


@dataclass
class Row:
    case: str
    task: Task
    rows: int
    platform: Scores
    baseline: Scores
    trivial: Scores
    best_iteration: int
    dropped: str


def run_case(case: Case, directory: Path) -> Row:
    path = directory / f"{case.name.split()[0]}.csv"
    case.frame().to_csv(path, index=False)
    frame = pd.read_csv(path)
    columns = columns_from_frame(frame)
    started = time.perf_counter()
    result = train_model(frame, columns, case.target, Task.AUTO, {}, CONFIG)
    platform = Scores(result.metrics, seconds=time.perf_counter() - started)
    # The same rows and split as the platform's, for the two others.
    prepared = prepare(frame, columns, case.target, Task.AUTO, CONFIG)
    kept = frame.loc[target_present(frame[case.target]).to_numpy()].reset_index(drop=True)
    labels = np.concatenate([prepared.train_labels, prepared.valid_labels])
    order = np.concatenate([prepared.train_features.index, prepared.valid_features.index])
    by_row = np.empty_like(labels)
    by_row[order] = labels
    train_index = np.asarray(prepared.train_features.index)
    valid_index = np.asarray(prepared.valid_features.index)
    task = result.decision.task
    baseline = baseline_scores(kept, case.target, task, train_index, valid_index, by_row)
    trivial = trivial_scores(
        task, len(result.decision.class_labels), prepared.train_labels, prepared.valid_labels
    )
    dropped = ", ".join(f"{name}:{why}" for name, why in result.dropped_columns) or "-"
    return Row(
        case.name, task, len(kept), platform, baseline, trivial, result.best_iteration, dropped
    )


# -- report --------------------------------------------------------------------------------


def verdict(row: Row) -> tuple[bool, str]:
    primary = PRIMARY_METRICS[row.task]
    assert row.platform.metrics is not None
    assert row.trivial.metrics is not None
    ours = row.platform.metrics[primary.name]

    def better_or_equal(a: float, b: float) -> bool:
        return a >= b - 1e-12 if primary.higher_is_better else a <= b + 1e-12

    def strictly_better(a: float, b: float) -> bool:
        return a > b if primary.higher_is_better else a < b

    ok = strictly_better(ours, row.trivial.metrics[primary.name])
    notes = []
    if row.baseline.metrics is not None:
        beats = better_or_equal(ours, row.baseline.metrics[primary.name])
        ok = ok and beats
        notes.append("≥ baseline" if beats else "WORSE than baseline")
    else:
        notes.append("baseline fails")
    notes.append(
        "> trivial" if strictly_better(ours, row.trivial.metrics[primary.name]) else "NOT > trivial"
    )
    return ok, ", ".join(notes)


def cell(scores: Scores, name: str) -> str:
    if scores.metrics is None:
        return "fails"
    return f"{scores.metrics[name]:.4f}"


def print_table(rows: list[Row]) -> bool:
    sides = f"{'platform':>9} {'baseline':>9} {'trivial':>9}"
    header = (
        f"{'dataset':36} {'task':10} {'rows':>6} {'metric':9} {sides} | {'2nd metric':10} {sides}"
        " | verdict"
    )
    print(header)
    print("-" * len(header))
    all_ok = True
    for row in rows:
        primary = PRIMARY_METRICS[row.task]
        second = "log_loss" if row.task != Task.REGRESSION else "mae"
        ok, note = verdict(row)
        all_ok = all_ok and ok
        print(
            f"{row.case:36} {row.task.value:10} {row.rows:>6} {primary.name:9} "
            f"{cell(row.platform, primary.name):>9} {cell(row.baseline, primary.name):>9} "
            f"{cell(row.trivial, primary.name):>9} | {second:10} {cell(row.platform, second):>9} "
            f"{cell(row.baseline, second):>9} {cell(row.trivial, second):>9} | {note}"
        )
    print()
    for row in rows:
        extra = f"  baseline error: {row.baseline.error}" if row.baseline.error else ""
        print(
            f"{row.case}: best iteration {row.best_iteration}, dropped {row.dropped}, "
            f"platform {row.platform.seconds:.2f}s{extra}"
        )
    print()
    print("verdict:", "PASS" if all_ok else "FAIL")
    return all_ok


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as scratch:
        rows = [run_case(case, Path(scratch)) for case in CASES]
    return 0 if print_table(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
