"""FLAML and AutoGluon on one table, for bench/search.py: run by the benchmark
environment's Python (.venv-bench, `make bench-env`), never by a service.

    .venv-bench/bin/python bench/search_rivals.py TOOL BUDGET TRAIN.csv TEST.csv SPEC.json OUT.json

SPEC names the target, the task (BINARY, MULTICLASS, REGRESSION), the metric
to optimise and the class labels in the platform's order. OUT receives the
test rows' predictions (probabilities per class, or values) and the seconds
the fit and the prediction took. Imports only pandas, numpy and the tool.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FLAML_METRICS = {"roc_auc": "roc_auc", "macro_f1": "macro_f1", "rmse": "rmse"}
FLAML_TASKS = {
    "BINARY": "classification",
    "MULTICLASS": "classification",
    "REGRESSION": "regression",
}
AUTOGLUON_METRICS = {
    "roc_auc": "roc_auc",
    "macro_f1": "f1_macro",
    "rmse": "root_mean_squared_error",
}


def run_flaml(budget: float, train: pd.DataFrame, test: pd.DataFrame, spec: dict[str, Any]) -> Any:
    flaml: Any = importlib.import_module("flaml")  # .venv-bench only: untyped to mypy

    target = spec["target"]
    automl = flaml.AutoML()
    automl.fit(
        X_train=train.drop(columns=[target]),
        y_train=train[target],
        task=FLAML_TASKS[spec["task"]],
        metric=FLAML_METRICS[spec["metric"]],
        time_budget=budget,
        seed=0,
        verbose=0,
        n_jobs=2,
    )
    features = test.drop(columns=[target])
    if spec["task"] == "REGRESSION":
        return np.asarray(automl.predict(features), dtype="float64")
    probabilities = pd.DataFrame(automl.predict_proba(features), columns=automl.classes_)
    return probabilities


def run_autogluon(
    budget: float, train: pd.DataFrame, test: pd.DataFrame, spec: dict[str, Any]
) -> Any:
    tabular: Any = importlib.import_module("autogluon.tabular")
    TabularPredictor = tabular.TabularPredictor

    target = spec["target"]
    problem = {"BINARY": "binary", "MULTICLASS": "multiclass", "REGRESSION": "regression"}
    with tempfile.TemporaryDirectory(prefix="bench-autogluon-") as path:
        predictor = TabularPredictor(
            label=target,
            problem_type=problem[spec["task"]],
            eval_metric=AUTOGLUON_METRICS[spec["metric"]],
            path=path,
            verbosity=0,
        ).fit(train, time_limit=budget, presets="medium_quality")
        features = test.drop(columns=[target])
        if spec["task"] == "REGRESSION":
            return np.asarray(predictor.predict(features), dtype="float64")
        return predictor.predict_proba(features)


def main() -> int:
    tool, budget, train_path, test_path, spec_path, out_path = sys.argv[1:7]
    spec = json.loads(Path(spec_path).read_text())
    target = spec["target"]
    train = pd.read_csv(train_path)
    test = pd.read_csv(test_path)
    if spec["task"] != "REGRESSION":  # labels as text, whatever their type in the CSV
        train[target] = train[target].astype(str)
        test[target] = test[target].astype(str)
    started = time.perf_counter()
    run = run_flaml if tool == "flaml" else run_autogluon
    predictions = run(float(budget), train, test, spec)
    seconds = time.perf_counter() - started
    if isinstance(predictions, pd.DataFrame):
        columns = {str(c): c for c in predictions.columns}
        ordered = [predictions[columns[label]].to_numpy() for label in spec["class_names"]]
        values: Any = np.column_stack(ordered).tolist()
    else:
        values = np.asarray(predictions).tolist()
    Path(out_path).write_text(json.dumps({"predictions": values, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
