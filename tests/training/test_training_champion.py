"""The `champion` alias on equal footing: before it moves, the current champion is
scored on the new job's validation rows, through the real Trainer process with real
NATS and MLflow (basic auth)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelyard.jobs.v1 import training_job_pb2
from tests.training.training_support import Bus, DatasetServer, TrainerProcess, final_event

pytestmark = pytest.mark.slow


def table(path: Path, signal: str, rows: int = 600, seed: int = 5) -> Path:
    """Columns x1, x2, x3; `y` yes/no decided by `signal`: x1 alone (no noise: any
    model of it scores ROC AUC ~1), or x2 with noise (a good model scores ~0.85)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, 3)), columns=["x1", "x2", "x3"])
    noisy_x2 = frame["x2"] + rng.normal(0, 0.6, rows)
    positive = frame["x1"] > 0 if signal == "x1" else noisy_x2 > 0
    frame["y"] = np.where(positive, "yes", "no")
    frame.to_csv(path, index=False)
    return path


async def test_champion_is_scored_on_the_new_jobs_rows_before_it_moves(
    trainer: TrainerProcess,
    bus: Bus,
    dataset_server: DatasetServer,
    data_dir: Path,
    mlflow_client: Any,
) -> None:
    easy = dataset_server.service.add_csv(table(data_dir / "easy.csv", "x1"), "easy")
    hard = dataset_server.service.add_csv(table(data_dir / "hard.csv", "x2", seed=6), "hard")
    first = final_event(await bus.wait_final(await bus.submit(easy, "y", model_name="footing")))
    assert first.succeeded.mlflow.promoted_to_champion
    assert first.succeeded.mlflow.champion_decision == "no champion yet"
    stored_auc = first.succeeded.metrics["roc_auc"]
    assert stored_auc > 0.97

    # Version 2 is worse than version 1's stored ROC AUC (measured on the easy rows),
    # but on version 2's own validation rows version 1 is close to a coin toss.
    second = final_event(await bus.wait_final(await bus.submit(hard, "y", model_name="footing")))
    decided = second.succeeded
    assert decided.metrics["roc_auc"] < stored_auc  # the old rule would have kept version 1
    assert decided.mlflow.promoted_to_champion
    assert decided.mlflow.champion_decision.startswith(
        "on this job's 120 validation rows, against version 1: roc_auc "
    )
    champion = await asyncio.to_thread(
        mlflow_client.get_model_version_by_alias, "footing", "champion"
    )
    assert int(champion.version) == decided.mlflow.registered_model_version == 2
    assert champion.tags["champion_rule"] == "same_validation_rows"
    assert champion.tags["champion_decision"] == decided.mlflow.champion_decision

    # The same again on the same rows: version 2, scored on them, is not beaten by a tie.
    third = final_event(await bus.wait_final(await bus.submit(hard, "y", model_name="footing")))
    assert not third.succeeded.mlflow.promoted_to_champion
    assert "does not beat" in third.succeeded.mlflow.champion_decision
    assert "on this job's 120 validation rows, against version 2" in (
        third.succeeded.mlflow.champion_decision
    )


async def test_a_champion_whose_features_do_not_fit_is_compared_by_stored_metrics(
    trainer: TrainerProcess,
    bus: Bus,
    dataset_server: DatasetServer,
    data_dir: Path,
    mlflow_client: Any,
) -> None:
    easy = dataset_server.service.add_csv(table(data_dir / "easy2.csv", "x1"), "easy2")
    first = final_event(await bus.wait_final(await bus.submit(easy, "y", model_name="unfit")))
    assert first.succeeded.mlflow.promoted_to_champion
    # A table without x1: version 1 cannot score its rows.
    without = pd.read_csv(data_dir / "hard.csv").drop(columns=["x1"])
    without.to_csv(data_dir / "without_x1.csv", index=False)
    other = dataset_server.service.add_csv(data_dir / "without_x1.csv", "without")
    second = final_event(await bus.wait_final(await bus.submit(other, "y", model_name="unfit")))
    decision = second.succeeded.mlflow.champion_decision
    assert not second.succeeded.mlflow.promoted_to_champion  # ~0.85 < ~1.0, stored
    assert decision.startswith("on each version's own validation rows, against version 1 (")
    assert "features do not fit" in decision
    assert "x1" in decision
    version = await asyncio.to_thread(mlflow_client.get_model_version, "unfit", "2")
    assert version.tags["champion_rule"] == "stored_metrics"


async def test_a_search_is_compared_with_the_champion_on_its_held_out_rows(
    trainer: TrainerProcess,
    bus: Bus,
    dataset_server: DatasetServer,
    data_dir: Path,
    mlflow_client: Any,
) -> None:
    """A search's model is refit on every row; the champion is scored on the rows the
    search held out (5-fold: all 600) and compared with the search's held-out predictions
    there, as a single job's validation rows are."""
    easy = dataset_server.service.add_csv(table(data_dir / "easy3.csv", "x1"), "easy3")
    hard = dataset_server.service.add_csv(table(data_dir / "hard3.csv", "x2", seed=6), "hard3")
    first = final_event(await bus.wait_final(await bus.submit(easy, "y", model_name="searched")))
    assert first.succeeded.mlflow.promoted_to_champion
    search = training_job_pb2.TrainingSearch(max_trials=3)
    second = final_event(
        await bus.wait_final(await bus.submit(hard, "y", model_name="searched", search=search))
    )
    decided = second.succeeded
    assert decided.metrics["roc_auc"] < first.succeeded.metrics["roc_auc"]  # stored: worse
    assert decided.mlflow.promoted_to_champion
    assert decided.mlflow.champion_decision.startswith(
        "on this job's 600 validation rows, against version 1: roc_auc "
    )
    version = await asyncio.to_thread(mlflow_client.get_model_version, "searched", "2")
    assert version.tags["champion_rule"] == "same_validation_rows"
    assert decided.evaluation_report.validation_rows == 600
