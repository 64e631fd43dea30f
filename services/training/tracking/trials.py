"""A search in MLflow: every trial a child run of the job's run, and the leaderboard.

A trial's child run (`<job>-trial-<n>`, tag `mlflow.parentRunId`) holds the
configuration as params, the primary metric per fold (steps 0..K-1) and its
mean, the rounds kept and the seconds it took; three calls, made in the
tracker's pool while the search goes on, so the search never waits on MLflow.
The job's run gets `leaderboard.json` (every trial, best first) and
`leaderboard.png` (score against time, best so far as a line).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag

from services.training.fit.search import SearchOutcome, TrialRecord
from services.training.tracking.calls import MlflowCalls

RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAILED": "FAILED"}


def log_trial(
    mlflow: MlflowCalls,
    experiment_id: str,
    parent_run_id: str,
    job_id: str,
    trial: TrialRecord,
) -> str:
    """The trial's child run; returns its run id. Blocking (call in the pool)."""
    client = mlflow.client
    started = int(trial.started_at * 1000)
    run = client.create_run(
        experiment_id,
        start_time=started,
        run_name=f"{job_id}-trial-{trial.number}",
        tags={
            "mlflow.parentRunId": parent_run_id,
            "modelyard.job_id": job_id,
            "modelyard.trial": str(trial.number),
            "modelyard.trial_state": trial.state,
            "modelyard.objective": trial.objective,
        },
    )
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"fold_{trial.metric_name}", value, now, fold)
        for fold, value in enumerate(trial.fold_metric_values)
        if math.isfinite(value)
    ]
    if math.isfinite(trial.metric_value):
        metrics.append(Metric(trial.metric_name, trial.metric_value, now, 0))
    metrics += [
        Metric("rounds", float(trial.rounds), now, 0),
        Metric("seconds", trial.seconds, now, 0),
    ]
    params = [Param(key, value[:6000]) for key, value in sorted(trial.params.items())]
    params.append(Param("search_objective", trial.objective[:6000]))
    client.log_batch(
        run.info.run_id,
        metrics=metrics,
        params=params,
        tags=[RunTag("modelyard.best_so_far", str(trial.best_so_far).lower())],
    )
    client.set_terminated(
        run.info.run_id,
        RUN_STATUS.get(trial.state, "FINISHED"),
        end_time=started + int(trial.seconds * 1000),
    )
    return str(run.info.run_id)


def leaderboard(outcome: SearchOutcome, higher_is_better: bool) -> dict[str, Any]:
    """Every trial, the chosen one first (with cross-validation not always the best
    mean: see fit/search.SELECTION_MARGIN), then complete ones by score, then pruned,
    then failed."""

    def order(trial: TrialRecord) -> tuple[int, float]:
        rank = {"COMPLETE": 0, "PRUNED": 1}.get(trial.state, 2)
        if trial.number == outcome.best_trial:
            rank = -1
        value = trial.metric_value if math.isfinite(trial.metric_value) else math.inf
        return rank, (-value if higher_is_better and math.isfinite(value) else value)

    return {
        "metric": outcome.trials[outcome.best_trial].metric_name,
        "higher_is_better": higher_is_better,
        "validation": outcome.validation,
        "folds": outcome.folds,
        "fold_repeats": outcome.fold_repeats,
        "best_trial": outcome.best_trial,
        "objective": outcome.objective,
        "objectives_considered": outcome.objectives_considered,
        "stopped_by": outcome.stopped_by,
        "seconds": round(outcome.seconds, 3),
        "best_configuration": outcome.refit_params,
        "trials": [
            {
                "number": trial.number,
                "state": trial.state,
                "metric_value": trial.metric_value if math.isfinite(trial.metric_value) else None,
                "fold_metric_values": trial.fold_metric_values,
                "objective": trial.objective,
                "rounds": trial.rounds,
                "seconds": round(trial.seconds, 3),
                "params": trial.params,
            }
            for trial in sorted(outcome.trials, key=order)
        ],
    }


def write_leaderboard(outcome: SearchOutcome, higher_is_better: bool, directory: Path) -> None:
    (directory / "leaderboard.json").write_text(
        json.dumps(leaderboard(outcome, higher_is_better), indent=2, default=str)
    )
    leaderboard_chart(outcome, higher_is_better, directory / "leaderboard.png")


def leaderboard_chart(outcome: SearchOutcome, higher_is_better: bool, path: Path) -> None:
    """Each complete trial's score against the time it ended, and the best so far."""
    from matplotlib.figure import Figure

    if not outcome.trials:
        return
    start = min(trial.started_at for trial in outcome.trials)
    points = [
        (trial.started_at + trial.seconds - start, trial.metric_value, trial.number)
        for trial in outcome.trials
        if trial.state == "COMPLETE" and math.isfinite(trial.metric_value)
    ]
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    if points:
        axes.scatter([p[0] for p in points], [p[1] for p in points], s=14, color="#3b7dd8")
        best: list[float] = []
        for _, value, _ in points:
            if not best:
                best.append(value)
            else:
                pick = max if higher_is_better else min
                best.append(pick(best[-1], value))
        axes.step([p[0] for p in points], best, where="post", color="#d8603b", label="best so far")
        axes.legend(loc="best")
    metric = outcome.trials[outcome.best_trial].metric_name
    axes.set_xlabel("seconds since the search started")
    axes.set_ylabel(f"{metric} ({outcome.validation})")
    axes.set_title(f"Search: {len(outcome.trials)} trials, best #{outcome.best_trial}")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
