"""The Trainer process end to end: a TrainingRequest on NATS in (published exactly as
JobsService's relay does), JobEvents out, and in MLflow (basic auth) the run with its
parameters, validation curve, metrics, artifacts and dataset input, a registered
version tagged with the job, the `champion` alias, and a pyfunc model that predicts
on raw CSV rows."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import mlflow
import nats.js.errors
import numpy as np
import pandas as pd
import pytest
from google.protobuf import struct_pb2

from devstack.components import MlflowServer
from modelyard.dispatch.v1 import dispatch_pb2
from modelyard.jobs.v1 import training_job_pb2
from modelyard.training.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from runtime.errors import error_metadata, error_reason
from runtime.messaging import (
    TRAINING_REQUESTS_STREAM,
    TRAINING_REQUESTS_SUBJECT,
    cancellations,
)
from tests.training.training_support import (
    SERVICE_TOKEN,
    SLOW_PARAMS,
    Bus,
    DatasetServer,
    TrainerProcess,
    final_event,
    long_job_csv,
    reason_of,
    sklearn_csv,
)

pytestmark = pytest.mark.slow

Task = training_job_pb2.TrainingJob.Task
BINARY_METRICS = {"accuracy", "f1", "roc_auc", "log_loss", "precision", "recall"}


def kinds(events: list[dispatch_pb2.JobEvent]) -> list[str]:
    return [str(event.WhichOneof("kind")) for event in events]


async def in_thread(call: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(call, *args, **kwargs)


async def test_binary_job_is_trained_logged_registered_and_loadable(
    trainer: TrainerProcess,
    bus: Bus,
    dataset_server: DatasetServer,
    data_dir: Path,
    mlflow_client: Any,
) -> None:
    csv = sklearn_csv(data_dir, "breast_cancer")
    dataset_id = dataset_server.service.add_csv(csv, "breast cancer")
    job_id = await bus.submit(dataset_id, "target")
    events = await bus.wait_final(job_id)

    assert kinds(events)[0] == "started"
    assert all(event.attempt == 1 and event.source.startswith("trainer/") for event in events)
    assert len({event.event_id for event in events}) == len(events)
    detected = [e.started.task_detection for e in events if e.HasField("started")]
    assert detected[-1].task == Task.BINARY
    assert "BINARY" in detected[-1].reason
    assert "progress" in kinds(events)
    final = final_event(events)
    assert final.WhichOneof("kind") == "succeeded"
    succeeded = final.succeeded
    assert set(succeeded.metrics) == BINARY_METRICS
    assert succeeded.metrics["roc_auc"] > 0.95
    assert succeeded.task_detection.class_names == ["0", "1"]
    summary = succeeded.summary
    assert summary.rows_used == 569
    assert summary.validation_rows == 114
    assert len(summary.features) == 30
    assert 0 < summary.best_iteration < int(summary.effective_params["num_iterations"])
    run = succeeded.mlflow
    assert run.registered_model_name == "breast-cancer-target"
    assert run.model_uri == f"models:/breast-cancer-target/{run.registered_model_version}"
    assert run.promoted_to_champion
    assert run.run_url.endswith(f"/runs/{run.run_id}")

    logged = await in_thread(mlflow_client.get_run, run.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.tags["modelyard.job_id"] == job_id
    assert logged.data.tags["modelyard.dataset_id"] == dataset_id
    assert logged.data.params["learning_rate"] == "0.1"
    assert logged.data.params["objective"] == "binary"
    assert logged.data.params["n_estimators"] == str(summary.best_iteration)  # trees kept
    assert logged.data.metrics["roc_auc"] == pytest.approx(succeeded.metrics["roc_auc"])
    curve = await in_thread(mlflow_client.get_metric_history, run.run_id, "validation_auc")
    assert [point.step for point in curve] == list(range(1, len(curve) + 1))
    assert len(curve) == summary.best_iteration + 50  # early stopping patience
    artifacts = {item.path for item in await in_thread(mlflow_client.list_artifacts, run.run_id)}
    assert {"feature_importance.json", "feature_importance.png"} <= artifacts
    assert json.loads(logged.data.tags["modelyard.job_result"])["metrics"]["roc_auc"] > 0.95
    importance_path = await in_thread(
        mlflow_client.download_artifacts, run.run_id, "feature_importance.json"
    )
    importance = json.loads(await in_thread(Path(importance_path).read_text))
    assert importance["importance_type"] == "gain"
    assert set(importance["features"]) == set(summary.features)
    inputs = logged.inputs.dataset_inputs
    assert len(inputs) == 1
    profile = json.loads(inputs[0].dataset.profile)
    assert profile["sha256"] == dataset_server.service.datasets[dataset_id].proto.sha256

    version = await in_thread(
        mlflow_client.get_model_version,
        run.registered_model_name,
        str(run.registered_model_version),
    )
    assert version.tags["job_id"] == job_id
    assert version.run_id == run.run_id
    champion = await in_thread(
        mlflow_client.get_model_version_by_alias, run.registered_model_name, "champion"
    )
    assert champion.version == version.version

    info = await in_thread(mlflow.models.get_model_info, run.model_uri)
    assert info.signature is not None
    assert info.saved_input_example_info is not None
    model = await in_thread(mlflow.pyfunc.load_model, run.model_uri)
    raw = pd.read_csv(csv)
    predictions = await in_thread(model.predict, raw.drop(columns=["target"]).head(20))
    assert list(predictions.columns) == ["prediction", "probability_0", "probability_1"]
    accuracy = (predictions["prediction"].to_numpy() == raw["target"].head(20).to_numpy()).mean()
    assert accuracy >= 0.9
    assert np.allclose(predictions[["probability_0", "probability_1"]].sum(axis=1), 1.0)


async def test_string_labels_train_multiclass_and_champion_moves_only_when_beaten(
    trainer: TrainerProcess,
    bus: Bus,
    dataset_server: DatasetServer,
    data_dir: Path,
    mlflow_client: Any,
) -> None:
    csv = sklearn_csv(data_dir, "iris", string_labels=True)
    dataset_id = dataset_server.service.add_csv(csv, "iris")
    first = await bus.submit(dataset_id, "target", model_name="iris-species")
    first_final = final_event(await bus.wait_final(first)).succeeded
    assert first_final.task_detection.task == Task.MULTICLASS
    assert list(first_final.task_detection.class_names) == ["setosa", "versicolor", "virginica"]
    assert set(first_final.metrics) == {"accuracy", "macro_f1", "log_loss"}
    assert first_final.mlflow.promoted_to_champion

    # A deliberately weak model: one shallow tree.
    weaker = await bus.submit(
        dataset_id,
        "target",
        model_name="iris-species",
        params={"n_estimators": "1", "num_leaves": "2", "learning_rate": "0.01"},
    )
    weaker_final = final_event(await bus.wait_final(weaker)).succeeded
    assert weaker_final.metrics["macro_f1"] < first_final.metrics["macro_f1"]
    assert (
        weaker_final.mlflow.registered_model_version
        == first_final.mlflow.registered_model_version + 1
    )
    assert not weaker_final.mlflow.promoted_to_champion
    assert weaker_final.summary.effective_params["num_iterations"] == "1"
    champion = await in_thread(mlflow_client.get_model_version_by_alias, "iris-species", "champion")
    assert int(champion.version) == first_final.mlflow.registered_model_version

    model = await in_thread(mlflow.pyfunc.load_model, "models:/iris-species@champion")
    raw = pd.read_csv(csv).drop(columns=["target"])
    predictions = await in_thread(model.predict, raw.iloc[[0, 60, 120]])
    assert predictions["prediction"].tolist() == ["setosa", "versicolor", "virginica"]


# mlflow_client points this process's mlflow at the server, which
# mlflow.pyfunc.load_model below reads; without it the test passed only after
# another test had asked for the fixture.
@pytest.mark.usefixtures("mlflow_client")
async def test_regression_and_messy_columns(
    trainer: TrainerProcess,
    bus: Bus,
    dataset_server: DatasetServer,
    data_dir: Path,
) -> None:
    diabetes = dataset_server.service.add_csv(sklearn_csv(data_dir, "diabetes"), "diabetes")
    messy = dataset_server.service.add_csv(data_dir / "messy.csv", "messy")
    regression = await bus.submit(diabetes, "target")
    classification = await bus.submit(messy, "label")

    regressed = final_event(await bus.wait_final(regression)).succeeded
    assert regressed.task_detection.task == Task.REGRESSION
    assert set(regressed.metrics) == {"rmse", "mae", "r2", "mse"}
    assert regressed.metrics["r2"] > 0.2
    assert regressed.metrics["rmse"] == pytest.approx(regressed.metrics["mse"] ** 0.5)

    classified = final_event(await bus.wait_final(classification)).succeeded
    summary = classified.summary
    dropped = {column.name: column.reason for column in summary.dropped_columns}
    assert dropped == {
        "customer_id": "id_like",
        "row_number": "id_like",
        "constant": "constant",
    }
    assert set(summary.features) == {"color", "size", "count", "flag"} | {
        f"signup__{part}" for part in ("year", "month", "day", "dayofweek", "elapsed_days")
    }
    assert summary.rows_dropped_missing_target > 0
    assert summary.rows_used == 600 - summary.rows_dropped_missing_target
    assert list(classified.task_detection.class_names) == ["no", "yes"]

    model = await in_thread(mlflow.pyfunc.load_model, classified.mlflow.model_uri)
    rows = pd.read_csv(data_dir / "messy.csv").drop(columns=["label"]).head(8)
    rows.loc[0, "color"] = "orange"  # never seen in training: treated as missing
    predictions = await in_thread(model.predict, rows)
    assert set(predictions["prediction"]) <= {"no", "yes"}
    assert predictions[["probability_no", "probability_yes"]].notna().all().all()


async def test_bad_jobs_fail_with_stable_reasons(
    trainer: TrainerProcess,
    bus: Bus,
    dataset_server: DatasetServer,
    data_dir: Path,
    mlflow_client: Any,
) -> None:
    frame = pd.DataFrame(
        {
            "x": np.arange(40, dtype=float) % 7,
            "same": ["a"] * 40,
            "word": ["a", "b"] * 20,
            "rare": ["common"] * 38 + ["rare"] * 2,
            "id": [f"id{i}" for i in range(40)],
        }
    )
    frame.to_csv(data_dir / "bad.csv", index=False)
    bad = dataset_server.service.add_csv(data_dir / "bad.csv", "bad")
    id_only = data_dir / "id-only.csv"
    frame[["id", "word"]].to_csv(id_only, index=False)
    no_features = dataset_server.service.add_csv(id_only, "id only")
    cases = {
        await bus.submit(bad, "same"): ("TARGET_CONSTANT", grpc.StatusCode.FAILED_PRECONDITION),
        await bus.submit(bad, "nope"): (
            "TARGET_COLUMN_NOT_FOUND",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        await bus.submit("ds-missing", "x"): ("DATASET_NOT_FOUND", grpc.StatusCode.NOT_FOUND),
        await bus.submit(bad, "word", task=Task.REGRESSION): (
            "TARGET_NOT_NUMERIC",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        await bus.submit(bad, "rare"): (
            "TARGET_CLASS_TOO_SMALL",
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        await bus.submit(no_features, "word"): (
            "NO_USABLE_FEATURES",
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        await bus.submit(bad, "word", params={"output_model": "/tmp/x.txt"}): (
            "PARAM_NOT_ALLOWED",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        await bus.submit(bad, "word", task=Task.MULTICLASS): (
            "TASK_TARGET_MISMATCH",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        await bus.submit(bad, "x", params={"is_unbalance": "true"}): (
            "PARAM_INVALID_VALUE",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    }
    for job_id, (reason, code) in cases.items():
        final = final_event(await bus.wait_final(job_id))
        assert final.WhichOneof("kind") == "failed", (reason, final)
        assert reason_of(final) == reason, final.failed.error.message
        assert final.failed.error.code == code.value[0]
        assert final.failed.error.message
    constant = next(job for job, (reason, _) in cases.items() if reason == "TARGET_CONSTANT")
    failed_run = final_event(await bus.events(constant)).failed.mlflow.run_id
    assert failed_run
    assert (await in_thread(mlflow_client.get_run, failed_run)).info.status == "FAILED"


async def test_cancel_stops_a_running_job_and_a_queued_one(
    trainer: TrainerProcess,
    bus: Bus,
    dataset_server: DatasetServer,
    data_dir: Path,
    mlflow_client: Any,
) -> None:
    dataset_id = dataset_server.service.add_csv(long_job_csv(data_dir), "long")
    flags = await cancellations(bus.js)

    running = await bus.submit(dataset_id, "y", params=SLOW_PARAMS)
    await bus.wait_for(running, "progress")
    await flags.put(running, b"cancel")
    events = await bus.wait_final(running, within=30)
    final = final_event(events)
    assert final.WhichOneof("kind") == "cancelled"
    run = await in_thread(mlflow_client.get_run, final.cancelled.mlflow.run_id)
    assert run.info.status == "KILLED"

    reads_before = dataset_server.service.reads
    queued = "job-cancelled-early-" + running[-6:]
    await flags.put(queued, b"cancel")
    await bus.submit(dataset_id, "y", job_id=queued)
    events = await bus.wait_final(queued, within=30)
    assert kinds(events) == ["cancelled"]
    assert dataset_server.service.reads == reads_before


async def test_a_request_with_an_invalid_job_id_is_terminated_not_redelivered(
    trainer: TrainerProcess, bus: Bus, dataset_server: DatasetServer, data_dir: Path
) -> None:
    """Dots, wildcards or spaces are no id Jobs makes, and would land in NATS subjects."""
    dataset_id = dataset_server.service.add_csv(long_job_csv(data_dir), "long")
    reads_before = dataset_server.service.reads
    sequences = []
    for job_id in ("job.a", "job-*", "job->", "job b"):
        request = dispatch_pb2.TrainingRequest(
            job_id=job_id, dataset_id=dataset_id, target_column="y"
        )
        ack = await bus.js.publish(
            TRAINING_REQUESTS_SUBJECT, request.SerializeToString(), headers={"Nats-Msg-Id": job_id}
        )
        sequences.append(ack.seq)

    async def still_queued() -> list[int]:
        left = []
        for sequence in sequences:
            try:
                await bus.js.get_msg(TRAINING_REQUESTS_STREAM, sequence)
                left.append(sequence)
            except nats.js.errors.NotFoundError:
                pass
        return left

    for _ in range(100):
        if not await still_queued():
            break
        await asyncio.sleep(0.2)
    assert await still_queued() == []  # terminated: gone from the work queue
    assert trainer.logs().count("training request with an invalid job id terminated") >= 4
    assert dataset_server.service.reads == reads_before  # nothing was read, nothing trained


async def test_a_request_for_a_job_jobs_does_not_know_is_refused_never_trained(
    trainer: TrainerProcess, bus: Bus, dataset_server: DatasetServer, data_dir: Path
) -> None:
    """The forged request that registered a new version of an existing model."""
    dataset_id = dataset_server.service.add_csv(sklearn_csv(data_dir, "iris"), "iris")
    reads_before = dataset_server.service.reads
    job_id = "job-forged-" + dataset_id[-8:]
    request = dispatch_pb2.TrainingRequest(
        job_id=job_id, dataset_id=dataset_id, target_column="target", registered_model_name="iris"
    )
    ack = await bus.js.publish(TRAINING_REQUESTS_SUBJECT, request.SerializeToString())
    for _ in range(100):
        try:
            await bus.js.get_msg(TRAINING_REQUESTS_STREAM, ack.seq)
        except nats.js.errors.NotFoundError:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the request is still queued")
    assert await bus.events(job_id) == []
    assert dataset_server.service.reads == reads_before
    assert "training request for a job Jobs does not know terminated" in trainer.logs()
    # A job Jobs knows, submitted after it, trains as usual.
    known = await bus.submit(dataset_id, "target")
    assert final_event(await bus.wait_final(known)).WhichOneof("kind") == "succeeded"


async def test_job_past_its_max_run_duration_fails(
    trainer: TrainerProcess, bus: Bus, dataset_server: DatasetServer, data_dir: Path
) -> None:
    dataset_id = dataset_server.service.add_csv(long_job_csv(data_dir), "long")
    job_id = await bus.submit(dataset_id, "y", params=SLOW_PARAMS, max_run_seconds=3)
    final = final_event(await bus.wait_final(job_id, within=40))
    assert final.WhichOneof("kind") == "failed"
    assert reason_of(final) == "DEADLINE_EXCEEDED"
    assert final.failed.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


def trainer_stub(trainer: TrainerProcess) -> tuple[Any, Any]:
    channel = grpc.aio.insecure_channel(trainer.address)
    return channel, trainer_service_pb2_grpc.TrainerServiceStub(channel)


METADATA = (("authorization", f"Bearer {SERVICE_TOKEN}"),)


def struct(row: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(row)
    return message


async def test_trainer_service_lists_models_and_predicts(
    trainer: TrainerProcess, bus: Bus, dataset_server: DatasetServer, data_dir: Path
) -> None:
    messy = dataset_server.service.add_csv(data_dir / "messy.csv", "messy")
    job_id = await bus.submit(messy, "label", model_name="messy-service")
    succeeded = final_event(await bus.wait_final(job_id)).succeeded
    channel, stub = trainer_stub(trainer)
    async with channel:
        validated = await stub.ValidateTrainingParams(
            trainer_service_pb2.ValidateTrainingParamsRequest(
                params={"n_estimators": "200", "colsample_bytree": "0.5"}
            ),
            metadata=METADATA,
        )
        assert dict(validated.params) == {"num_iterations": "200", "feature_fraction": "0.5"}
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ValidateTrainingParams(
                trainer_service_pb2.ValidateTrainingParamsRequest(params={"machines": "a:1"}),
                metadata=METADATA,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(refused.value) == "PARAM_NOT_ALLOWED"

        listed = await stub.ListModels(trainer_service_pb2.ListModelsRequest(), metadata=METADATA)
        assert "messy-service" in {model.name for model in listed.models}
        for token in ("not a token!", "kY\u00c8"):  # the second once made MLflow's server fail
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListModels(
                    trainer_service_pb2.ListModelsRequest(page_token=token), metadata=METADATA
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_reason(refused.value) == "PAGE_TOKEN_INVALID"
        model = await stub.GetModel(
            trainer_service_pb2.GetModelRequest(model_name="messy-service"), metadata=METADATA
        )
        assert model.champion_version == succeeded.mlflow.registered_model_version
        newest = model.versions[0]
        assert newest.job_id == job_id
        assert newest.aliases == ["champion"]
        assert newest.task == Task.BINARY
        assert newest.metrics["roc_auc"] == pytest.approx(succeeded.metrics["roc_auc"])

        rows = [
            struct(
                {"color": "red", "size": 14.0, "count": 3, "flag": True, "signup": "2024-03-01"}
            ),
            struct(
                {"color": "orange", "size": None, "count": "7", "flag": "false", "signup": None}
            ),
        ]
        predicted = await stub.Predict(
            trainer_service_pb2.PredictRequest(model_name="messy-service", rows=rows),
            metadata=METADATA,
        )
        assert predicted.model_version == succeeded.mlflow.registered_model_version
        assert list(predicted.class_names) == ["no", "yes"]
        assert {p.value.string_value for p in predicted.predictions} <= {"no", "yes"}
        assert all(sum(p.probabilities) == pytest.approx(1.0) for p in predicted.predictions)
        by_version = await stub.Predict(
            trainer_service_pb2.PredictRequest(
                model_name="messy-service", version=newest.version, rows=rows[:1]
            ),
            metadata=METADATA,
        )
        assert by_version.predictions[0] == predicted.predictions[0]

        failures = [
            (
                trainer_service_pb2.PredictRequest(
                    model_name="messy-service", rows=[struct({"color": "red", "flag": True})]
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "PREDICT_COLUMNS_MISSING",
                "size",
            ),
            (
                trainer_service_pb2.PredictRequest(
                    model_name="messy-service",
                    rows=[rows[0], struct({"color": "red", "size": "big", "count": 1, "flag": 1})],
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "PREDICT_VALUE_INVALID",
                "'size'",
            ),
            (
                trainer_service_pb2.PredictRequest(model_name="no-such-model", rows=rows),
                grpc.StatusCode.NOT_FOUND,
                "MODEL_NOT_FOUND",
                "no-such-model",
            ),
            (
                trainer_service_pb2.PredictRequest(
                    model_name="messy-service", version=99, rows=rows
                ),
                grpc.StatusCode.NOT_FOUND,
                "MODEL_VERSION_NOT_FOUND",
                "99",
            ),
            (
                trainer_service_pb2.PredictRequest(
                    model_name="messy-service", alias="staging", rows=rows
                ),
                grpc.StatusCode.NOT_FOUND,
                "MODEL_VERSION_NOT_FOUND",
                "staging",
            ),
            (
                trainer_service_pb2.PredictRequest(model_name="messy-service", rows=rows * 6000),
                grpc.StatusCode.INVALID_ARGUMENT,
                "PREDICT_TOO_MANY_ROWS",
                "10000",
            ),
        ]
        details = []
        for request, code, reason, named in failures:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await stub.Predict(request, metadata=METADATA)
            assert failure.value.code() == code, reason
            assert error_reason(failure.value) == reason
            assert named in (failure.value.details() or "")
            details.append(error_metadata(failure.value))
        # The details say what was missing, and nothing empty.
        assert details[0] == {"column": "size,count,signup"}
        assert details[3] == {"model_name": "messy-service", "version": "99"}
        assert details[4] == {"model_name": "messy-service", "alias": "staging"}


async def test_mlflow_password_never_reaches_logs_or_events(
    trainer: TrainerProcess, bus: Bus, mlflow_server: MlflowServer
) -> None:
    # The Trainer's own MLflow password; the admin's it never has (test_training_mlflow_user.py).
    password = mlflow_server.trainer_password
    assert password not in trainer.logs()
    subscription = await bus.js.subscribe(
        "modelyard.jobs.*.events", stream="MODELYARD_JOB_EVENTS", ordered_consumer=True
    )
    seen = 0
    try:
        while True:
            try:
                message = await subscription.next_msg(timeout=1)
            except Exception:
                break
            seen += 1
            assert password.encode() not in message.data
    finally:
        await subscription.unsubscribe()
    assert seen > 0
