"""A searching job through the real Trainer process, NATS and MLflow (basic auth):
trial events with their child runs, progress that tells trial N and the best so
far, the leaderboard on the job's run, the model hash, a replay that matches it,
a cancel that registers nothing, and the Trainer's quote."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import grpc
import mlflow
import pytest
from google.protobuf import duration_pb2

from modelyard.dispatch.v1 import dispatch_pb2
from modelyard.jobs.v1 import training_job_pb2
from modelyard.training.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from runtime.errors import error_reason
from runtime.messaging import cancellations
from tests.training.test_training_search import counts_frame
from tests.training.training_support import (
    SERVICE_TOKEN,
    Bus,
    DatasetServer,
    TrainerProcess,
    final_event,
)

pytestmark = pytest.mark.slow

Trial = training_job_pb2.Trial


async def in_thread(call: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(call, *args, **kwargs)


@pytest.fixture(scope="module")
def counts_dataset(dataset_server: DatasetServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("search") / "visits.csv"
    counts_frame(rows=300).to_csv(path, index=False)
    return dataset_server.service.add_csv(path, "visits")


async def test_a_search_job_reports_its_trials_and_logs_them_to_mlflow(
    trainer: TrainerProcess,
    bus: Bus,
    counts_dataset: str,
    mlflow_client: Any,
) -> None:
    search = training_job_pb2.TrainingSearch(max_trials=5)
    job_id = await bus.submit(counts_dataset, "visits", params={"seed": "7"}, search=search)
    events = await bus.wait_final(job_id, within=180)
    final = final_event(events)
    assert final.WhichOneof("kind") == "succeeded", final
    summary = final.succeeded.summary
    outcome = summary.search
    assert outcome.trials == 5
    assert outcome.validation == "cv"
    assert (outcome.folds, outcome.fold_repeats) == (5, 3)  # 300 rows: 5 folds drawn 3 times
    assert outcome.stopped_by == "max_trials"
    assert outcome.objective in ("regression", "poisson", "tweedie")
    assert summary.effective_params["objective"] == outcome.objective
    assert set(outcome.metric_std) == {"rmse", "mae", "r2", "mse"}
    assert len(summary.model_sha256) == 64

    trials = [event.trial for event in events if event.HasField("trial")]
    assert sorted(trial.number for trial in trials) == [0, 1, 2, 3, 4]
    assert all(
        trial.state == Trial.STATE_COMPLETE or trial.state == Trial.STATE_PRUNED for trial in trials
    )
    assert all(trial.mlflow_run_id for trial in trials)
    best = next(trial for trial in trials if trial.number == outcome.best_trial)
    assert final.succeeded.metrics["rmse"] == pytest.approx(best.metric_value)
    searching = [
        e.progress for e in events if e.HasField("progress") and e.progress.best_metric_name
    ]
    assert searching, "no progress event told the search's state"
    assert max(progress.trials_done for progress in searching) == 5
    assert all(progress.best_metric_name == "rmse" for progress in searching)

    run_id = final.succeeded.mlflow.run_id
    children = await in_thread(
        mlflow_client.search_runs,
        [final.succeeded.mlflow.experiment_id],
        f"tags.mlflow.parentRunId = '{run_id}'",
    )
    assert len(children) == 5
    child = next(run for run in children if run.info.run_id == best.mlflow_run_id)
    assert child.data.params["objective"] == best.objective or child.data.params["search_objective"]
    assert child.data.metrics["rmse"] == pytest.approx(best.metric_value)
    folds = await in_thread(mlflow_client.get_metric_history, child.info.run_id, "fold_rmse")
    assert [point.step for point in folds] == list(range(15))

    parent = await in_thread(mlflow_client.get_run, run_id)
    assert parent.data.tags["modelyard.search.trials"] == "5"
    assert parent.data.tags["modelyard.model_sha256"] == summary.model_sha256
    board_path = await in_thread(mlflow_client.download_artifacts, run_id, "leaderboard.json")
    board = json.loads(await in_thread(Path(board_path).read_text))
    assert board["trials"][0]["number"] == outcome.best_trial
    assert len(board["trials"]) == 5
    artifacts = {item.path for item in await in_thread(mlflow_client.list_artifacts, run_id)}
    assert "leaderboard.png" in artifacts
    # The evaluation report, as a single job's: drawn from the best configuration's
    # held-out predictions (5-fold: every row once), in the event and in the run.
    report = final.succeeded.evaluation_report
    assert report.job_id == job_id
    assert report.validation_rows == summary.rows_used
    assert len(report.residuals.x) > 0
    assert len(report.predicted_vs_actual.x) > 0
    assert {chart.name for chart in report.charts} >= {"residuals", "predicted_vs_actual"}
    files = await in_thread(mlflow_client.list_artifacts, run_id, "evaluation")
    assert {Path(item.path).name for item in files} >= {"report.json", "residuals.png"}

    # The registered model's file is the one whose hash the job reported, and loads.
    model_uri = final.succeeded.mlflow.model_uri
    local = await in_thread(mlflow.artifacts.download_artifacts, model_uri)
    booster_file = (await in_thread(lambda: list(Path(local).rglob("model.txt"))))[0]
    written = await in_thread(booster_file.read_bytes)
    assert hashlib.sha256(written).hexdigest() == summary.model_sha256
    model = await in_thread(mlflow.pyfunc.load_model, model_uri)
    rows = counts_frame(rows=300).drop(columns=["visits"]).head(5)
    assert len(await in_thread(model.predict, rows)) == 5

    # A replay of the recorded configuration gives the same file.
    replay = dispatch_pb2.ReplayConfiguration(
        source_job_id=job_id, expected_model_sha256=summary.model_sha256
    )
    replay.refit_params.update(summary.effective_params)
    replayed = await bus.submit(counts_dataset, "visits", params={"seed": "7"}, replay=replay)
    again = final_event(await bus.wait_final(replayed, within=120))
    assert again.WhichOneof("kind") == "succeeded", again.failed.error.message
    assert again.succeeded.summary.model_sha256 == summary.model_sha256
    assert not again.succeeded.summary.HasField("search")


async def test_a_cancelled_search_stops_and_registers_nothing(
    trainer: TrainerProcess, bus: Bus, counts_dataset: str, mlflow_client: Any
) -> None:
    flags = await cancellations(bus.js)
    search = training_job_pb2.TrainingSearch(budget=duration_pb2.Duration(seconds=120))
    job_id = await bus.submit(
        counts_dataset, "visits", search=search, model_name="cancelled-search"
    )
    await bus.wait_for(job_id, "trial", within=120)
    await flags.put(job_id, b"cancel")
    events = await bus.wait_final(job_id, within=60)
    final = final_event(events)
    assert final.WhichOneof("kind") == "cancelled"
    run = await in_thread(mlflow_client.get_run, final.cancelled.mlflow.run_id)
    assert run.info.status == "KILLED"
    versions = await in_thread(mlflow_client.search_model_versions, "name='cancelled-search'")
    assert versions == []


async def test_the_trainer_quotes_a_job(trainer: TrainerProcess, counts_dataset: str) -> None:
    metadata = (("authorization", f"Bearer {SERVICE_TOKEN}"),)
    async with grpc.aio.insecure_channel(trainer.address) as channel:
        stub = trainer_service_pb2_grpc.TrainerServiceStub(channel)
        default = await stub.EstimateTraining(
            trainer_service_pb2.EstimateTrainingRequest(
                dataset_id=counts_dataset, target_column="visits"
            ),
            metadata=metadata,
            timeout=10,
        )
        assert default.trials == 1
        assert default.wall_time.ToTimedelta().total_seconds() > 0
        assert default.peak_memory_bytes > 0
        assert default.fits_memory_limit
        searched = await stub.EstimateTraining(
            trainer_service_pb2.EstimateTrainingRequest(
                dataset_id=counts_dataset,
                target_column="visits",
                search=True,
                search_budget=duration_pb2.Duration(seconds=30),
            ),
            metadata=metadata,
            timeout=10,
        )
        assert searched.wall_time.ToTimedelta().total_seconds() >= 30
        assert searched.trials > 1
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.EstimateTraining(
                trainer_service_pb2.EstimateTrainingRequest(
                    dataset_id=counts_dataset, target_column="visits", params={"output_model": "x"}
                ),
                metadata=metadata,
                timeout=10,
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(error.value) == "PARAM_NOT_ALLOWED"
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.EstimateTraining(
                trainer_service_pb2.EstimateTrainingRequest(
                    dataset_id="0" * 32, target_column="visits"
                ),
                metadata=metadata,
                timeout=10,
            )
        assert error_reason(error.value) == "DATASET_NOT_FOUND"
