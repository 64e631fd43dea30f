"""Issue 10 end to end: a file as people have it (pandas' index, dates written day
first, a second version uploaded later), trained on by name, predicted on with the
same strings, through REST and with `mlflow.pyfunc.load_model`."""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import mlflow
import mlflow.tracking._model_registry.utils as registry_utils
import numpy as np
import pandas as pd
import pytest

from devstack.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def busy_days(rows: int, seed: int) -> pd.DataFrame:
    """Whether a shop is busy: weekends and evenings are, and nothing else tells."""
    rng = np.random.default_rng(seed)
    days = pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 700, rows), unit="D")
    hours = rng.integers(0, 24, rows)
    at = days + pd.to_timedelta(hours, unit="h")
    busy = (days.dayofweek >= 5) | (hours >= 18)
    return pd.DataFrame(
        {
            "day": days.strftime("%d/%m/%Y"),
            "at": at.strftime("%m/%d/%Y %H:%M"),
            "noise": rng.normal(0, 1, rows).round(3),
            "busy": np.where(busy, "yes", "no"),
        }
    )


def upload(api: httpx.Client, frame: pd.DataFrame, **params: str) -> dict[str, Any]:
    body = frame.to_csv().encode()  # with pandas' index: a blank first header cell
    response = api.post(
        "/v1/datasets", params=params, content=body, headers={"Content-Type": "text/csv"}
    )
    assert response.status_code == 200, response.text
    dataset: dict[str, Any] = response.json()
    return dataset


def wait_for_job(api: httpx.Client, job_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.get(f"/v1/trainingJobs/{job_id}").json()
        if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still not final after {timeout}s")


@pytest.fixture
def mlflow_user(stack: Stack) -> Iterator[None]:
    assert stack.mlflow is not None
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"] = stack.mlflow.username
    os.environ["MLFLOW_TRACKING_PASSWORD"] = stack.mlflow.password
    mlflow.set_tracking_uri(stack.mlflow.url)
    # Registered models resolve through the registry URI, which other tests of the
    # session may have pointed elsewhere: ours while this test runs, theirs after.
    saved_registry = registry_utils._registry_uri
    saved["MLFLOW_REGISTRY_URI"] = os.environ.get("MLFLOW_REGISTRY_URI")
    mlflow.set_registry_uri(stack.mlflow.url)
    yield
    registry_utils._registry_uri = saved_registry
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_a_pandas_export_with_dates_trains_by_name_and_predicts_from_the_same_strings(
    api: httpx.Client, mlflow_user: None
) -> None:
    name = f"shop-{uuid.uuid4().hex[:6]}"
    first = upload(api, busy_days(300, seed=1), displayName=name)
    second = upload(api, busy_days(1500, seed=2), newVersionOf=name)
    assert (first["version"], second["version"]) == ("1", "2")
    columns = {column["name"]: column for column in second["columns"]}
    assert columns["unnamed_0"]["rowNumber"] is True
    assert columns["day"]["dataType"] == "DATE"
    assert columns["day"]["profile"]["dateFormat"] == "%d/%m/%Y"
    assert columns["at"]["dataType"] == "TIMESTAMP"
    assert columns["at"]["profile"]["dateFormat"] == "%m/%d/%Y %H:%M"

    created = api.post(
        "/v1/trainingJobs", json={"datasetId": name, "targetColumn": "busy", "task": "AUTO"}
    )
    assert created.status_code == 200, created.text
    assert created.json()["datasetId"] == second["datasetId"]  # the latest version's id
    job = wait_for_job(api, created.json()["jobId"])

    assert job["state"] == "SUCCEEDED", job.get("error")
    dropped = {item["name"]: item["reason"] for item in job["summary"]["droppedColumns"]}
    assert dropped == {"unnamed_0": "row_number"}
    features = set(job["summary"]["features"])
    assert {"day__dayofweek", "at__hour", "at__elapsed_days"} <= features
    assert job["metrics"]["accuracy"] > 0.9  # only the date parts can tell

    run = mlflow.get_run(job["mlflow"]["runId"])
    assert run.data.tags["modelyard.dataset_version"] == "2"
    assert run.data.tags["modelyard.dataset_name"] == name

    rows = [
        {"day": "23/03/2024", "at": "03/23/2024 10:00", "noise": 0.1},  # a Saturday
        {"day": "19/03/2024", "at": "03/19/2024 09:00", "noise": 0.1},  # a Tuesday morning
    ]
    model_name = job["mlflow"]["registeredModelName"]
    predicted = api.post(f"/v1/models/{model_name}:predict", json={"rows": rows})
    assert predicted.status_code == 200, predicted.text
    labels = [item["value"] for item in predicted.json()["predictions"]]
    assert labels == ["yes", "no"]

    model = mlflow.pyfunc.load_model(job["mlflow"]["modelUri"])
    scored = model.predict(pd.read_csv(io.StringIO(pd.DataFrame(rows).to_csv(index=False))))
    assert list(pd.DataFrame(scored)["prediction"]) == ["yes", "no"]
