"""Batch scoring jobs through the REST gateway, against the whole platform as real
processes: a model trained and registered in MLflow, a stored dataset scored by
name into a new dataset, followed live over Server-Sent Events, the output
downloaded and compared with Predict's answer on the same rows."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_iris

from devstack.stack import Stack
from tests.suite_support import wait_final

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {stack.api_token}"}
    with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=60) as api:
        yield api


class Iris:
    """iris uploaded as the named dataset `iris-scoring`, and a model of `species`."""

    def __init__(self, frame: pd.DataFrame, dataset: dict[str, Any], model: str, version: int):
        self.frame = frame
        self.dataset = dataset
        self.model = model
        self.version = version


@pytest.fixture(scope="module")
def iris(client: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> Iris:
    raw = load_iris(as_frame=True)
    frame = raw.frame.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    frame["species"] = frame.pop("target").map(dict(enumerate(raw.target_names)))
    frame.insert(0, "flower_id", [f"F{i:04d}" for i in range(len(frame))])
    path = tmp_path_factory.mktemp("scoring") / "iris-scoring.csv"
    frame.to_csv(path, index=False)
    uploaded = client.post(
        "/v1/datasets",
        params={"displayName": "iris-scoring"},
        content=path.read_bytes(),
        headers={"Content-Type": "text/csv"},
    )
    assert uploaded.status_code == 200, uploaded.text
    dataset = uploaded.json()
    created = client.post(
        "/v1/trainingJobs",
        json={
            "datasetId": dataset["datasetId"],
            "targetColumn": "species",
            "registeredModelName": "iris-scoring-species",
        },
    )
    assert created.status_code == 200, created.text
    job = wait_final(client, f"/v1/trainingJobs/{created.json()['jobId']}")
    assert job["state"] == "SUCCEEDED", job.get("error")
    version = int(job["mlflow"]["registeredModelVersion"])
    return Iris(frame, dataset, "iris-scoring-species", version)


def sse_jobs(api: httpx.Client, path: str) -> list[dict[str, Any]]:
    """Every job a watch sent, until the stream ends."""
    jobs = []
    with api.stream("GET", path, timeout=240) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                jobs.append(json.loads(line[len("data:") :])["scoringJob"])
    return jobs


def create(api: httpx.Client, **body: Any) -> httpx.Response:
    return api.post("/v1/scoringJobs", json=body)


def reason(response: httpx.Response) -> str:
    details = response.json()["error"]["details"]
    return str(next(d["reason"] for d in details if "reason" in d))


def test_a_dataset_scored_by_name_is_a_new_dataset_with_predicts_answers(
    client: httpx.Client, iris: Iris
) -> None:
    request_id = "score-" + uuid.uuid4().hex
    created = create(
        client,
        datasetId="iris-scoring",  # by name: its latest version
        modelName=iris.model,
        modelAlias="champion",
        passThroughColumns=["flower_id"],
        classProbabilities=True,
        requestId=request_id,
    )
    assert created.status_code == 200, created.text
    job = created.json()
    assert job["state"] == "QUEUED"
    assert job["datasetId"] == iris.dataset["datasetId"]
    assert int(job["modelVersion"]) == iris.version

    watched = sse_jobs(client, f"/v1/scoringJobs/{job['jobId']}:watch")
    assert watched[-1]["state"] == "SUCCEEDED", watched[-1].get("error")
    assert "RUNNING" in [update["state"] for update in watched]
    final = client.get(f"/v1/scoringJobs/{job['jobId']}").json()
    assert final == watched[-1]  # the watch ends on the job as stored
    assert int(final["progress"]["rowsDone"]) == len(iris.frame)
    assert int(final["output"]["rowsScored"]) == len(iris.frame)

    again = create(client, datasetId="iris-scoring", modelName=iris.model, requestId=request_id)
    assert again.status_code == 200, again.text
    assert again.json()["jobId"] == job["jobId"]  # idempotent: no second job
    listed = client.get("/v1/scoringJobs", params={"datasetId": job["datasetId"]}).json()
    assert job["jobId"] in [j["jobId"] for j in listed["scoringJobs"]]
    assert client.get(f"/v1/trainingJobs/{job['jobId']}").status_code == 404

    output_id = final["output"]["datasetId"]
    output = client.get(f"/v1/datasets/{output_id}").json()
    assert output["state"] == "READY"
    assert int(output["rowCount"]) == len(iris.frame)
    download = client.get(f"/v1/datasets/{output_id}:download")
    assert download.status_code == 200, download.text
    scored = pq.read_table(io.BytesIO(download.content)).to_pandas()
    as_csv = client.get(f"/v1/datasets/{output_id}:download", params={"format": "CSV"})
    # pandas' default float parser reads every written float back exactly;
    # its float_precision argument is deprecated (Pandas4Warning).
    from_csv = pd.read_csv(io.BytesIO(as_csv.content), keep_default_na=False)
    assert from_csv.equals(scored)
    classes = sorted(iris.frame["species"].unique())
    assert list(scored.columns) == [
        "flower_id",
        "prediction",
        *(f"probability_{name}" for name in classes),
        "flags",
    ]
    assert scored["flower_id"].tolist() == iris.frame["flower_id"].tolist()

    rows = iris.frame.drop(columns=["species", "flower_id"]).to_dict(orient="records")
    predicted = client.post(
        f"/v1/models/{iris.model}:predict", json={"version": iris.version, "rows": rows}
    )
    assert predicted.status_code == 200, predicted.text
    answer = predicted.json()
    assert scored["prediction"].tolist() == [p["value"] for p in answer["predictions"]]
    order = [answer["classNames"].index(name) for name in classes]
    probabilities = np.array([p["probabilities"] for p in answer["predictions"]])[:, order]
    np.testing.assert_allclose(
        scored[[f"probability_{name}" for name in classes]].to_numpy(), probabilities, rtol=1e-9
    )


def test_unknown_model_version_and_dataset_are_refused_with_their_reason(
    client: httpx.Client, iris: Iris
) -> None:
    no_model = create(client, datasetId="iris-scoring", modelName="no-such-model")
    assert no_model.status_code == 404, no_model.text
    assert reason(no_model) == "MODEL_NOT_FOUND"

    no_version = create(client, datasetId="iris-scoring", modelName=iris.model, modelVersion=99)
    assert no_version.status_code == 404, no_version.text
    assert reason(no_version) == "MODEL_VERSION_NOT_FOUND"

    no_dataset = create(client, datasetId="no-such-dataset@7", modelName=iris.model)
    assert no_dataset.status_code == 404, no_dataset.text
    assert reason(no_dataset) == "DATASET_NOT_FOUND"

    no_column = create(
        client, datasetId="iris-scoring", modelName=iris.model, passThroughColumns=["nope"]
    )
    assert no_column.status_code == 400, no_column.text
    assert reason(no_column) == "SCORING_COLUMN_NOT_FOUND"


def test_a_dataset_without_the_models_columns_fails_the_job_with_a_reason(
    client: httpx.Client, iris: Iris
) -> None:
    csv = iris.frame[["flower_id", "sepal_length"]].to_csv(index=False).encode()
    uploaded = client.post(
        "/v1/datasets",
        params={"displayName": "iris-partial"},
        content=csv,
        headers={"Content-Type": "text/csv"},
    )
    assert uploaded.status_code == 200, uploaded.text
    created = create(client, datasetId="iris-partial", modelName=iris.model)
    assert created.status_code == 200, created.text
    job = wait_final(client, f"/v1/scoringJobs/{created.json()['jobId']}")
    assert job["state"] == "FAILED"
    info = next(d for d in job["error"]["details"] if "reason" in d)
    assert info["reason"] == "PREDICT_COLUMNS_MISSING"
    assert info["metadata"]["column"] == "sepal_width,petal_length,petal_width"


def test_a_queued_job_cancelled_is_never_scored(
    stack: Stack, client: httpx.Client, iris: Iris
) -> None:
    # A Trainer without worker slots answers GetModel but takes no job: the job stays
    # QUEUED while we cancel it.
    trainer_env = stack.options.extra_env.setdefault("trainer", {})
    slots = trainer_env.get("MODELYARD_TRAINER_WORKER_SLOTS")
    stack.processes["trainer"].stop()
    trainer_env["MODELYARD_TRAINER_WORKER_SLOTS"] = "0"
    stack.start_service("trainer")
    try:
        created = create(client, datasetId="iris-scoring", modelName=iris.model)
        assert created.status_code == 200, created.text
        job_id = created.json()["jobId"]
        cancelled = client.post(f"/v1/scoringJobs/{job_id}:cancel", json={})
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "CANCELLED"
        again = client.post(f"/v1/scoringJobs/{job_id}:cancel", json={})
        assert again.status_code == 400
        assert reason(again) == "JOB_ALREADY_FINISHED"
    finally:
        stack.processes["trainer"].stop()
        if slots is None:
            trainer_env.pop("MODELYARD_TRAINER_WORKER_SLOTS")
        else:
            trainer_env["MODELYARD_TRAINER_WORKER_SLOTS"] = slots
        stack.start_service("trainer")
    time.sleep(3)  # the restarted Trainer fetches the request and skips it
    job = client.get(f"/v1/scoringJobs/{job_id}").json()
    assert job["state"] == "CANCELLED"
    assert "output" not in job
