"""The current champion scored on a new job's validation rows.

Two versions' stored metrics may come from different data (another dataset
version, another split): comparing them says little. So before `champion` moves,
the champion is loaded and scored on exactly the rows the new version was
validated on, and the two are compared there (`registry.settle_champion`). When
that cannot be done, `why_not` says why, and the stored metrics decide.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from services.training.fit.pipeline import TrainingResult, evaluate
from services.training.model import pyfunc_model

logger = logging.getLogger("modelyard.trainer.mlflow")


@dataclass(frozen=True)
class ChampionOnSameRows:
    """The champion's metrics on the new job's validation rows, or why there are none."""

    version: int
    rows: int
    metrics: dict[str, float] | None
    why_not: str = ""
    # The new version's metrics on the same rows, when they are not its stored ones
    # (a search: its held-out predictions on every row, pooled).
    candidate_metrics: dict[str, float] | None = None


def score_champion(
    model_name: str, champion: ModelVersion, result: TrainingResult
) -> ChampionOnSameRows:
    version = int(champion.version)
    inputs, labels = result.valid_inputs, result.valid_labels
    if inputs is None or labels is None:
        return ChampionOnSameRows(version, 0, None, "this job kept no validation rows")
    rows = len(labels)

    def not_scored(why: str) -> ChampionOnSameRows:
        return ChampionOnSameRows(version, rows, None, why)

    try:
        loaded: Any = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
        inner = loaded.unwrap_python_model()
        booster, spec = inner.booster, inner.spec
    except (MlflowException, OSError, AttributeError, ValueError) as error:
        logger.info("champion not loadable", extra={"model": model_name, "error": str(error)})
        return not_scored(f"version {version} could not be loaded as a modelyard model")
    if spec.get("task") != result.spec["task"]:
        return not_scored(f"version {version} is a {spec.get('task')} model")
    if spec.get("class_labels") != result.spec.get("class_labels"):
        return not_scored(f"version {version} predicts other classes")
    try:
        features = pyfunc_model.coerce_features(inputs, spec)
    except pyfunc_model.InvalidModelInput as error:
        return not_scored(f"version {version}'s features do not fit this job's rows ({error})")
    raw = np.asarray(booster.predict(features))
    metrics = evaluate(result.decision.task, labels, raw)
    return ChampionOnSameRows(version, rows, metrics, candidate_metrics=result.held_out_metrics)
