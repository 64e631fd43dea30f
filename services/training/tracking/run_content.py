"""What a run holds besides numbers: the model's signature, the feature-importance
chart, and which points of a long validation curve are logged."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.models import ModelSignature
from mlflow.types import DataType
from mlflow.types.schema import AnyType, ColSpec, Schema

from services.training.fit.pipeline import TrainingResult
from services.training.model import pyfunc_model

# Validation-curve points logged per metric at most (a few log_batch calls per job).
CURVE_POINTS = 1000


def curve_steps(iterations: int, best_iteration: int) -> list[int]:
    """Iterations (from 1) whose validation metrics are logged: all of them, up to
    CURVE_POINTS; beyond, evenly spaced ones plus the best and the last."""
    if iterations <= CURVE_POINTS:
        return list(range(1, iterations + 1))
    stride = math.ceil(iterations / CURVE_POINTS)
    kept = set(range(stride, iterations + 1, stride)) | {1, iterations}
    if 1 <= best_iteration <= iterations:
        kept.add(best_iteration)
    return sorted(kept)


def model_signature(result: TrainingResult) -> ModelSignature:
    """Inputs: categorical columns as strings; numbers and booleans as Any.

    MLflow refuses int64 → double and float64 (with missing values) → long, so a
    typed numeric column would reject raw CSV rows; the model coerces them itself.
    """
    inputs: list[Any] = [
        ColSpec(DataType.string, feature["name"])
        if feature["kind"] == pyfunc_model.CATEGORICAL
        else ColSpec(AnyType(), feature["name"])  # type: ignore[no-untyped-call]
        for feature in result.spec["features"]
    ]
    columns: list[Any] = [ColSpec(_label_type(result), pyfunc_model.PREDICTION_COLUMN)]
    columns += [
        ColSpec(DataType.double, f"{pyfunc_model.PROBABILITY_PREFIX}{name}")
        for name in result.decision.class_names
    ]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(columns))


def _label_type(result: TrainingResult) -> DataType:
    labels = result.decision.class_labels
    if not labels or all(isinstance(label, float) for label in labels):
        return DataType.double
    if all(isinstance(label, bool) for label in labels):
        return DataType.boolean
    if all(isinstance(label, int) for label in labels):
        return DataType.long
    return DataType.string


def importance_chart(importance: Mapping[str, float], path: Path, top: int = 25) -> None:
    from matplotlib.figure import Figure

    items = list(importance.items())[:top][::-1]
    figure = Figure(figsize=(7, max(2.5, 0.3 * len(items) + 1)))
    axes = figure.add_subplot()
    axes.barh([name for name, _ in items], [gain for _, gain in items], color="#3b7dd8")
    axes.set_xlabel("total gain")
    axes.set_title("Feature importance (gain)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
