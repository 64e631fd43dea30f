"""The whole path, through the REST gateway, against real processes: upload a CSV,
train over NATS, find the model in MLflow and use it.

nats-server, an MLflow server with basic auth, moto's S3 server for the blob
store, PostgreSQL when it answers, the three services and the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from devstack.stack import Stack
from runtime.messaging import TRAINING_REQUESTS_STREAM
from tests.suite_support import mlflow_client_of, wait_final

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def csv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real tables: binary, multiclass with string labels, regression."""
    directory = tmp_path_factory.mktemp("csv")
    cancer = load_breast_cancer(as_frame=True).frame
    cancer["diagnosis"] = cancer.pop("target").map({0: "malignant", 1: "benign"})
    cancer.to_csv(directory / "breast_cancer.csv", index=False)
    iris = load_iris(as_frame=True)
    frame = iris.frame.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    frame["species"] = frame.pop("target").map(dict(enumerate(iris.target_names)))
    frame.to_csv(directory / "iris.csv", index=False)
    diabetes = load_diabetes(as_frame=True).frame
    diabetes.rename(columns={"target": "progression"}).to_csv(
        directory / "diabetes.csv", index=False
    )
    return directory


@pytest.fixture(scope="module")
def mlflow_client_env(stack: Stack) -> Iterator[None]:
    """The test reads MLflow as a data scientist would, with the admin's credentials."""
    assert stack.mlflow is not None
    with mlflow_client_of(stack.mlflow.url, stack.mlflow.username, stack.mlflow.password):
        yield


CASES = [
    # csv, target, expected task, metric keys the task must have
    ("breast_cancer.csv", "diagnosis", "BINARY", {"accuracy", "f1", "roc_auc", "log_loss"}),
    ("iris.csv", "species", "MULTICLASS", {"accuracy", "macro_f1", "log_loss"}),
    ("diabetes.csv", "progression", "REGRESSION", {"rmse", "mae", "r2", "mse"}),
]


@pytest.mark.parametrize(("csv_name", "target", "task", "metric_keys"), CASES)
def test_csv_to_registered_model_that_predicts(
    api: httpx.Client,
    upload: Any,
    csv_dir: Path,
    mlflow_client_env: None,
    csv_name: str,
    target: str,
    task: str,
    metric_keys: set[str],
) -> None:
    dataset = upload(csv_dir / csv_name)
    original = pd.read_csv(csv_dir / csv_name)
    assert int(dataset["rowCount"]) == len(original)
    assert [c["name"] for c in dataset["columns"]] == list(original.columns)

    created = api.post(
        "/v1/trainingJobs",
        json={"datasetId": dataset["datasetId"], "targetColumn": target, "task": "AUTO"},
    )
    assert created.status_code == 200, created.text
    job = wait_final(api, f"/v1/trainingJobs/{created.json()['jobId']}")

    assert job["state"] == "SUCCEEDED", job.get("error")
    assert job["taskDetection"]["task"] == task
    assert metric_keys <= set(job["metrics"])
    run = job["mlflow"]
    assert run["runId"]
    assert run["modelUri"]
    version = int(run["registeredModelVersion"])
    assert version >= 1

    listed = api.get("/v1/trainingJobs", params={"datasetId": dataset["datasetId"]}).json()
    assert [j["jobId"] for j in listed["trainingJobs"]] == [job["jobId"]]

    model = mlflow.pyfunc.load_model(f"models:/{run['registeredModelName']}/{version}")
    rows = original.drop(columns=[target]).head(20)
    predictions = model.predict(rows)
    assert len(predictions) == 20
    if task == "REGRESSION":
        predicted = pd.DataFrame(predictions)["prediction"].astype(float)
        assert predicted.between(original[target].min() - 100, original[target].max() + 100).all()
    else:
        labels = set(pd.DataFrame(predictions)["prediction"].astype(str))
        assert labels <= set(original[target].astype(str))
        # A real model gets most of its own training rows right.
        accuracy = (pd.DataFrame(predictions)["prediction"] == original[target].head(20)).mean()
        assert accuracy >= 0.8


def test_wrong_target_column_is_refused_and_queues_nothing(
    api: httpx.Client, upload: Any, csv_dir: Path, stack: Stack
) -> None:
    dataset = upload(csv_dir / "iris.csv")
    published_before = asyncio.run(published_requests(stack))

    response = api.post(
        "/v1/trainingJobs",
        json={"datasetId": dataset["datasetId"], "targetColumn": "no_such_column"},
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["reason"] == "TARGET_COLUMN_NOT_FOUND"
    assert "no_such_column" in error["message"]
    listed = api.get("/v1/trainingJobs", params={"datasetId": dataset["datasetId"]}).json()
    assert listed.get("trainingJobs", []) == []
    assert asyncio.run(published_requests(stack)) == published_before


def test_unknown_dataset_is_404(api: httpx.Client) -> None:
    response = api.post(
        "/v1/trainingJobs", json={"datasetId": "no-such-dataset", "targetColumn": "y"}
    )
    assert response.status_code == 404
    assert response.json()["error"]["details"][0]["reason"] == "DATASET_NOT_FOUND"
    assert api.get("/v1/datasets/no-such-dataset").status_code == 404


async def published_requests(stack: Stack) -> int:
    """How many TrainingRequests were ever published (the stream's last sequence)."""

    assert stack.nats is not None
    connection = await stack.nats.connect()
    try:
        info = await connection.jetstream().stream_info(TRAINING_REQUESTS_STREAM)
        return int(info.state.last_seq)
    finally:
        await connection.close()
