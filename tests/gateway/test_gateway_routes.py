"""Every unary route of the REST surface, through a real gateway process to fake backends:
path variables, query parameters, bodies, proto3 JSON in and out."""

from __future__ import annotations

import pytest

from modelyard.jobs.v1 import training_job_pb2
from tests.gateway.gateway_doubles import GatewayProcess, Recorder

pytestmark = pytest.mark.slow


async def test_get_training_job_returns_proto3_json(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    async with gateway.client() as client:
        response = await client.get("/v1/trainingJobs/job-42")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    job = response.json()
    assert recorder.requests["GetTrainingJob"].job_id == "job-42"
    assert job["jobId"] == "job-42"
    assert job["state"] == "RUNNING"  # enums by name
    assert job["task"] == "BINARY"
    assert job["maxRunDuration"] == "3600s"
    assert job["createTime"] == "2023-11-14T22:13:20Z"
    assert job["mlflow"]["registeredModelVersion"] == "7"  # int64 as a string
    assert job["summary"]["rowsUsed"] == "569"
    assert job["metrics"] == {"accuracy": 0.93, "roc_auc": "NaN"}
    assert job["requestId"] == ""  # scalars are written even at their default
    assert "error" not in job  # an unset message is not


async def test_list_training_jobs_maps_query_parameters(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    async with gateway.client() as client:
        response = await client.get(
            "/v1/trainingJobs",
            params={"pageSize": "10", "pageToken": "tok", "state": "RUNNING", "datasetId": "d1"},
        )
    assert response.status_code == 200
    assert [job["jobId"] for job in response.json()["trainingJobs"]] == ["job-1", "job-2"]
    request = recorder.requests["ListTrainingJobs"]
    assert request.page_size == 10
    assert request.page_token == "tok"
    assert request.state == training_job_pb2.TrainingJob.RUNNING
    assert request.dataset_id == "d1"


async def test_query_parameters_take_snake_case_names_too(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    async with gateway.client() as client:
        response = await client.get(
            "/v1/datasets", params={"page_size": "5", "display_name_contains": "iris"}
        )
    assert response.status_code == 200
    assert response.json() == {"datasets": [], "nextPageToken": "next"}
    request = recorder.requests["ListDatasets"]
    assert (request.page_size, request.display_name_contains) == (5, "iris")


async def test_repeated_query_parameter_fills_a_repeated_field(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    async with gateway.client() as client:
        response = await client.get(
            "/v1/datasets/ds-1:read",
            params=[("columns", "a"), ("columns", "b c"), ("batchRows", "100")],
        )
    assert response.status_code == 200
    request = recorder.requests["ReadDataset"]
    assert list(request.columns) == ["a", "b c"]
    assert request.batch_rows == 100


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ({"pageSize": "ten"}, None),
        ({"state": "NAPPING"}, None),
        ({"unknownThing": "1"}, "unknownThing"),
        ({"jobId": "x"}, "jobId"),  # not a field of the list request
    ],
)
async def test_bad_query_parameters_are_refused(
    gateway: GatewayProcess, recorder: Recorder, query: dict[str, str], parameter: str | None
) -> None:
    async with gateway.client() as client:
        response = await client.get("/v1/trainingJobs", params=query)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["reason"] == "QUERY_PARAMETER_INVALID"
    if parameter:
        assert error["details"][0]["metadata"]["parameter"] == parameter
    assert "ListTrainingJobs" not in recorder.requests


async def test_path_field_cannot_be_set_from_the_query(gateway: GatewayProcess) -> None:
    async with gateway.client() as client:
        response = await client.get("/v1/datasets/ds-1", params={"datasetId": "other"})
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["reason"] == "QUERY_PARAMETER_INVALID"


async def test_get_and_delete_dataset(gateway: GatewayProcess, recorder: Recorder) -> None:
    async with gateway.client() as client:
        got = await client.get("/v1/datasets/ds-7")
        deleted = await client.delete("/v1/datasets/ds-7")
    assert got.status_code == 200
    dataset = got.json()
    assert dataset["datasetId"] == "ds-7"
    assert dataset["rowCount"] == "150"
    assert dataset["columns"][0]["dataType"] == "FLOAT"
    assert dataset["columns"][0]["profile"]["numeric"]["max"] == 7.9
    assert deleted.status_code == 200
    assert deleted.json() == {}
    assert recorder.requests["DeleteDataset"].dataset_id == "ds-7"


@pytest.mark.parametrize(
    "body",
    [
        {
            "datasetId": "ds-1",
            "targetColumn": "label",
            "task": "MULTICLASS",
            "params": {"num_leaves": "63"},
            "registeredModelName": "iris-model",
            "requestId": "req-1",
            "maxRunDuration": "600s",
        },
        {
            "dataset_id": "ds-1",
            "target_column": "label",
            "task": "MULTICLASS",
            "params": {"num_leaves": "63"},
            "registered_model_name": "iris-model",
            "request_id": "req-1",
            "max_run_duration": "600s",
        },
    ],
    ids=["camelCase", "snake_case"],
)
async def test_create_training_job_takes_the_whole_body(
    gateway: GatewayProcess, recorder: Recorder, body: dict[str, object]
) -> None:
    async with gateway.client() as client:
        response = await client.post("/v1/trainingJobs", json=body)
    assert response.status_code == 200, response.text
    request = recorder.requests["CreateTrainingJob"]
    assert request.dataset_id == "ds-1"
    assert request.target_column == "label"
    assert request.task == training_job_pb2.TrainingJob.MULTICLASS
    assert dict(request.params) == {"num_leaves": "63"}
    assert request.registered_model_name == "iris-model"
    assert request.request_id == "req-1"
    assert request.max_run_duration.seconds == 600
    job = response.json()
    assert job["state"] == "QUEUED"
    assert job["registeredModelName"] == "iris-model"
    assert job["maxRunDuration"] == "600s"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"datasetId": "ds-1", "colour": "blue"}', "colour"),
        (b'{"datasetId": 12', "not valid JSON"),
        (b'["datasetId"]', "JSON object"),
        (b'{"task": "GUESS"}', "GUESS"),
        (b'{"params": {"a": 1}}', "params"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_bad_bodies_are_refused_with_a_reason(
    gateway: GatewayProcess, recorder: Recorder, content: bytes, fragment: str
) -> None:
    async with gateway.client() as client:
        response = await client.post(
            "/v1/trainingJobs", content=content, headers={"content-type": "application/json"}
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"][0]["reason"] == "REQUEST_BODY_INVALID"
    assert fragment in error["message"]
    assert "CreateTrainingJob" not in recorder.requests


async def test_cancel_takes_the_job_from_the_path_with_or_without_a_body(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    async with gateway.client() as client:
        empty = await client.post("/v1/trainingJobs/job-9:cancel")
        assert recorder.requests["CancelTrainingJob"].job_id == "job-9"
        # The path wins over a body naming another job.
        with_body = await client.post("/v1/trainingJobs/job-10:cancel", json={"jobId": "x"})
        assert recorder.requests["CancelTrainingJob"].job_id == "job-10"
    assert empty.status_code == with_body.status_code == 200
    assert empty.json()["state"] == "CANCELLING"


async def test_models_routes_decode_path_values(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    async with gateway.client() as client:
        listed = await client.get("/v1/models", params={"pageSize": "3"})
        dotted = await client.get("/v1/models/churn.v2-final")
        encoded = await client.get("/v1/models/team%2Fchurn%20model%3Aprod")
    assert listed.status_code == 200
    assert listed.json()["models"][0]["championVersion"] == "1"
    assert recorder.requests["ListModels"].page_size == 3
    assert dotted.json()["name"] == "churn.v2-final"
    assert encoded.status_code == 200
    assert recorder.requests["GetModel"].model_name == "team/churn model:prod"


async def test_predict_with_rows_and_a_version(gateway: GatewayProcess, recorder: Recorder) -> None:
    rows = [{"age": 41, "plan": "pro", "churned": None}, {"age": 29.5, "plan": "free"}]
    async with gateway.client() as client:
        response = await client.post(
            "/v1/models/churn.v2:predict", json={"rows": rows, "version": "2"}
        )
    assert response.status_code == 200, response.text
    request = recorder.requests["Predict"]
    assert request.model_name == "churn.v2"
    assert request.version == 2
    assert request.rows[0]["plan"] == "pro"
    assert request.rows[0]["age"] == 41
    body = response.json()
    assert body["modelVersion"] == "2"
    # Every repeated field is written, empty too: no trust flags, no explanations asked for.
    assert body["predictions"] == [
        {"value": "yes", "probabilities": [0.25, 0.75], "flags": [], "explanations": []},
        {"value": "yes", "probabilities": [0.25, 0.75], "flags": [], "explanations": []},
    ]


async def test_validate_training_params_route(gateway: GatewayProcess, recorder: Recorder) -> None:
    async with gateway.client() as client:
        response = await client.post(
            "/v1/trainingParams:validate", json={"params": {"learning_rate": "0.1"}}
        )
    assert response.status_code == 200
    assert response.json() == {"params": {"learning_rate": "0.1"}}


async def test_body_route_refuses_query_parameters(gateway: GatewayProcess) -> None:
    async with gateway.client() as client:
        response = await client.post(
            "/v1/trainingJobs", params={"datasetId": "d"}, json={"targetColumn": "y"}
        )
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["reason"] == "QUERY_PARAMETER_INVALID"
