"""The predecessor's acceptance procedure, as its users run it, against the whole
stack: an ordinary HTTP client uploads a CSV as a multipart form, trains, polls the
job until COMPLETED, then finds in MLflow the run with the parameters
`learning_rate` and `n_estimators`, the metric `accuracy` (or `mse`), the model
and its registered version. Bad input gets the old error shape, never a 5xx, and
changes nothing stored."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.tracking import MlflowClient

from devstack.stack import Stack
from tests.suite_support import mlflow_client_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

IRIS = Path(__file__).resolve().parents[2] / "devstack" / "samples" / "iris.csv"
# Two classes; and twelve numeric classes, which AUTO would take for a number to predict.
BINARY_CSV = "x,y,label\n" + "".join(
    f"{i % 7},{(i * 3) % 11},{'yes' if i % 7 > 3 else 'no'}\n" for i in range(80)
)
TWELVE_CLASSES_CSV = "x,y,grade\n" + "".join(
    f"{i % 12},{(i * 5) % 13},{i % 12}\n" for i in range(240)
)


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    """A plain HTTP client with the bearer token: all the predecessor's users add."""
    headers = {"Authorization": f"Bearer {stack.api_token}"}
    with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=60) as http:
        yield http


@pytest.fixture
def mlflow(stack: Stack) -> Iterator[MlflowClient]:
    assert stack.mlflow is not None
    with mlflow_client_of(stack.mlflow.url, stack.mlflow.username, stack.mlflow.password) as client:
        yield client


def upload(client: httpx.Client, name: str, content: bytes) -> str:
    response = client.post("/datasets/upload", files={"file": (name, content, "text/csv")})
    assert response.status_code == 200, response.text
    dataset_id: str = response.json()["dataset_id"]
    return dataset_id


def train_to_completion(client: httpx.Client, body: dict[str, str]) -> dict[str, Any]:
    started = client.post("/models/train", json=body)
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "PENDING"
    job_id = started.json()["job_id"]
    deadline = time.monotonic() + 180
    while True:
        job: dict[str, Any] = client.get(f"/models/jobs/{job_id}").json()
        assert job["status"] in ("PENDING", "RUNNING", "COMPLETED"), job
        if job["status"] == "COMPLETED" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert job["status"] == "COMPLETED", job
    return job


def test_acceptance_classification(
    stack: Stack, client: httpx.Client, mlflow: MlflowClient
) -> None:
    dataset_id = upload(client, "iris.csv", IRIS.read_bytes())
    started = client.post("/models/train", json={"dataset_id": dataset_id, "target_col": "species"})
    assert started.status_code == 200, started.text
    assert started.json()["mlflow_ui"] is None  # no run yet: the job's view gives the link
    job = train_to_completion(client, {"dataset_id": dataset_id, "target_col": "species"})
    assert (job["dataset_id"], job["target_col"], job["task_type"]) == (
        dataset_id,
        "species",
        "classification",
    )
    assert 0.0 <= job["metrics"]["accuracy"] <= 1.0
    assert job["error_message"] is None
    assert stack.mlflow is not None
    assert job["mlflow_ui"].startswith(stack.mlflow.url)
    assert job["mlflow_ui"].endswith(f"/runs/{job['mlflow_run_id']}")
    assert job["created_at"]

    # What the acceptance reads in the MLflow UI.
    run = mlflow.get_run(job["mlflow_run_id"])
    assert float(run.data.params["learning_rate"]) > 0
    assert int(run.data.params["n_estimators"]) == int(run.data.metrics["best_iteration"])
    assert run.data.metrics["accuracy"] == pytest.approx(job["metrics"]["accuracy"])
    # The model: the run's logged model (MLflow 3 keeps models beside runs), registered.
    assert run.outputs is not None
    logged = [output.model_id for output in run.outputs.model_outputs]
    assert len(logged) == 1
    assert "MLmodel" in {a.path for a in mlflow.list_logged_model_artifacts(logged[0])}
    versions = mlflow.search_model_versions(f"name = '{job['model_name']}'")
    assert job["mlflow_run_id"] in {version.run_id for version in versions}
    assert job["model_uri"].startswith(f"models:/{job['model_name']}/")


def test_acceptance_regression(client: httpx.Client, mlflow: MlflowClient) -> None:
    dataset_id = upload(client, "iris.csv", IRIS.read_bytes())
    job = train_to_completion(
        client, {"dataset_id": dataset_id, "target_col": "petal_width", "task_type": "regression"}
    )
    assert job["task_type"] == "regression"
    run = mlflow.get_run(job["mlflow_run_id"])
    assert run.data.metrics["mse"] == pytest.approx(job["metrics"]["mse"])
    assert {"learning_rate", "n_estimators"} <= set(run.data.params)


@pytest.mark.parametrize(
    ("content", "target", "task"),
    [(BINARY_CSV, "label", "BINARY"), (TWELVE_CLASSES_CSV, "grade", "MULTICLASS")],
    ids=["binary", "twelve numeric classes"],
)
def test_classification_trains_binary_and_multiclass_targets(
    client: httpx.Client, content: str, target: str, task: str
) -> None:
    dataset_id = upload(client, f"{target}.csv", content.encode())
    job = train_to_completion(client, {"dataset_id": dataset_id, "target_col": target})
    assert "accuracy" in job["metrics"]
    trained = client.get(f"/v1/trainingJobs/{job['id']}").json()
    assert trained["taskDetection"]["task"] == task


def stored(client: httpx.Client) -> tuple[dict[str, Any], list[str]]:
    """The READY datasets (with their content's hash and rows) and the jobs. A refused
    upload may leave a FAILED record saying why; nothing READY changes."""
    datasets = client.get("/v1/datasets", params={"pageSize": 1000}).json()
    jobs = client.get("/v1/trainingJobs", params={"pageSize": 1000}).json()
    return (
        {
            d["datasetId"]: (d["sha256"], d["rowCount"])
            for d in datasets.get("datasets", [])
            if d["state"] == "READY"
        },
        sorted(j["jobId"] for j in jobs.get("trainingJobs", [])),
    )


def test_bad_input_gets_the_old_error_shape_and_changes_nothing(client: httpx.Client) -> None:
    dataset_id = upload(client, "iris.csv", IRIS.read_bytes())
    before = stored(client)
    train = "/models/train"
    cases = [
        (
            client.post("/datasets/upload", files={"data": ("a.csv", b"a,b\n1,2\n")}),
            422,
            "REQUEST_BODY_INVALID",
        ),
        (client.post("/datasets/upload", files={"file": ("a.csv", b"")}), 400, "EMPTY_FILE"),
        (
            client.post(
                train,
                json={"dataset_id": dataset_id, "target_col": "species", "task_type": "clustering"},
            ),
            422,
            "REQUEST_BODY_INVALID",
        ),
        (
            client.post(train, json={"dataset_id": "0" * 32, "target_col": "species"}),
            404,
            "DATASET_NOT_FOUND",
        ),
        (client.get(f"/models/jobs/{'0' * 32}"), 404, "JOB_NOT_FOUND"),
        (
            client.post(train, content=b"dataset_id=1", headers={"content-type": "text/plain"}),
            422,
            "REQUEST_BODY_INVALID",
        ),
    ]
    for response, status, reason in cases:
        assert response.status_code == status, (response.request.url, response.text)
        document = response.json()
        assert set(document) == {"detail", "reason"}
        assert document["reason"] == reason
    assert cases[3][0].json()["detail"] == "Dataset not found"
    assert cases[4][0].json()["detail"] == "Job not found"
    assert stored(client) == before
