"""The predecessor's routes through a real gateway (fake backends): translated to the
/v1 calls, the multipart file streamed, errors in the old shape, behind the token,
deprecated in the OpenAPI document, off with the switch."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import psutil
import pytest

from gateway.legacy import CANCELLED_MESSAGE, STATUS_OF_STATE, job_view
from modelyard.jobs.v1.training_job_pb2 import TaskDetection, TrainingJob
from runtime.errors import make_status
from tests.gateway.gateway_doubles import MISSING, GatewayProcess, Recorder

MIB = 1024 * 1024
BOUNDARY = "modelyard-legacy-test"


# -- the mapping table -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (TrainingJob.QUEUED, "PENDING"),
        (TrainingJob.RUNNING, "RUNNING"),
        (TrainingJob.CANCELLING, "RUNNING"),
        (TrainingJob.SUCCEEDED, "COMPLETED"),
        (TrainingJob.FAILED, "FAILED"),
        (TrainingJob.CANCELLED, "FAILED"),
    ],
)
def test_every_job_state_has_an_old_status(state: int, status: str) -> None:
    assert job_view(TrainingJob(job_id="j", state=state))["status"] == status  # type: ignore[arg-type]
    assert set(STATUS_OF_STATE) == set(TrainingJob.State.values()) - {0}


def test_a_cancelled_job_is_failed_with_a_message_that_says_so() -> None:
    view = job_view(TrainingJob(job_id="j", state=TrainingJob.CANCELLED))
    assert (view["status"], view["error_message"]) == ("FAILED", CANCELLED_MESSAGE)
    assert "cancelled" in CANCELLED_MESSAGE


def test_a_failed_job_carries_its_error_message() -> None:
    job = TrainingJob(job_id="j", state=TrainingJob.FAILED)
    status = make_status(grpc.StatusCode.FAILED_PRECONDITION, "TARGET_CONSTANT", "single value")
    job.error.CopyFrom(status)
    assert job_view(job)["error_message"] == "single value"


@pytest.mark.parametrize(
    ("asked", "trained", "task_type"),
    [
        (TrainingJob.CLASSIFICATION, None, "classification"),
        (TrainingJob.CLASSIFICATION, TrainingJob.MULTICLASS, "classification"),
        (TrainingJob.REGRESSION, TrainingJob.REGRESSION, "regression"),
        (TrainingJob.AUTO, None, None),  # a /v1 job the Trainer has not decided yet
        (TrainingJob.AUTO, TrainingJob.BINARY, "classification"),
    ],
)
def test_task_type_is_the_task_trained(asked: int, trained: int | None, task_type: str) -> None:
    job = TrainingJob(job_id="j", task=asked)  # type: ignore[arg-type]
    if trained is not None:
        job.task_detection.CopyFrom(TaskDetection(task=trained))  # type: ignore[arg-type]
    assert job_view(job)["task_type"] == task_type


# -- through the gateway ----------------------------------------------------------------


def multipart(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += content + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.mark.slow
async def test_multipart_upload_is_streamed_to_upload_dataset(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    total = 50 * MIB
    line = b"1.5,2.25,abc,yes\n"
    piece = (line * (64 * 1024 // len(line) + 1))[: 64 * 1024]
    process = psutil.Process(gateway.process.pid)
    baseline = peak = process.memory_info().rss
    finished_sending: list[float] = []
    expected = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        # a field before the file, the file in 64 KiB pieces, a field after it
        yield multipart([("note", None, b"first")]).removesuffix(f"--{BOUNDARY}--\r\n".encode())
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            'filename="C:\\data\\sales.csv"\r\nContent-Type: text/csv\r\n\r\n'
        ).encode()
        for _ in range(total // len(piece)):
            expected.update(piece)
            yield piece
            await asyncio.sleep(0)
        yield b"\r\n" + multipart([("note", None, b"last")])
        finished_sending.append(time.monotonic())

    async def sample_memory() -> None:
        nonlocal peak
        while True:
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample_memory())
    try:
        async with gateway.client(timeout=120) as client:
            response = await client.post("/datasets/upload", content=body(), headers=MULTIPART)
    finally:
        sampler.cancel()
    assert response.status_code == 200, response.text
    assert response.json()["dataset_id"] == "ds-new"
    assert response.json()["filename"] == "sales.csv"
    upload = recorder.uploads[-1]
    assert upload.header is not None
    assert upload.header.display_name == "sales.csv"
    assert upload.total_bytes == total - total % len(piece)
    assert upload.sha256.hexdigest() == expected.hexdigest()
    assert upload.first_chunk_at is not None
    assert upload.first_chunk_at < finished_sending[0]  # streamed, not collected first
    assert peak - baseline < 25 * MIB, f"gateway grew by {(peak - baseline) / MIB:.0f} MiB"


async def old_error(response: httpx.Response, status: int, reason: str) -> Any:
    assert response.status_code == status, response.text
    document = response.json()
    assert set(document) == {"detail", "reason"}
    assert document["reason"] == reason
    assert response.headers["x-request-id"]
    return document["detail"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (multipart([("data", "iris.csv", b"a,b\n1,2\n")]), MULTIPART),  # wrong field name
        (multipart([]), MULTIPART),  # no field at all
        (b"a,b\n1,2\n", {"content-type": "text/csv"}),  # not a form
        (b"a,b\n1,2\n", {"content-type": "multipart/form-data"}),  # no boundary
    ],
    ids=["other field", "empty form", "raw csv", "no boundary"],
)
async def test_upload_without_a_file_field_is_422(
    gateway: GatewayProcess, recorder: Recorder, content: bytes, headers: dict[str, str]
) -> None:
    uploads = len(recorder.uploads)
    async with gateway.client() as client:
        response = await client.post("/datasets/upload", content=content, headers=headers)
    detail = await old_error(response, 422, "REQUEST_BODY_INVALID")
    assert detail == [
        {"type": "missing", "loc": ["body", "file"], "msg": "Field required", "input": None}
    ]
    assert len(recorder.uploads) == uploads  # nothing reached the Dataset service


@pytest.mark.slow
async def test_upload_of_an_empty_file_gets_the_services_refusal(
    gateway: GatewayProcess,
) -> None:
    async with gateway.client() as client:
        response = await client.post(
            "/datasets/upload", content=multipart([("file", "e.csv", b"")]), headers=MULTIPART
        )
    assert await old_error(response, 400, "CSV_EMPTY") == "the file is empty"


@pytest.mark.slow
async def test_upload_with_an_ordinary_http_client(gateway: GatewayProcess) -> None:
    async with gateway.client() as client:
        response = await client.post(
            "/datasets/upload", files={"file": ("iris.csv", b"a,b\n1,2\n", "text/csv")}
        )
    assert response.status_code == 200, response.text
    assert response.json()["filename"] == "iris.csv"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "task"),
    [
        ({"dataset_id": "ds-1", "target_col": "y"}, TrainingJob.CLASSIFICATION),
        ({"dataset_id": "ds-1", "target_col": "y", "task_type": "classification"}, 5),
        ({"dataset_id": "ds-1", "target_col": "y", "task_type": "regression"}, 4),
    ],
)
async def test_train_is_create_training_job(
    gateway: GatewayProcess, recorder: Recorder, body: dict[str, str], task: int
) -> None:
    async with gateway.client() as client:
        response = await client.post("/models/train", json=body, headers={"x-request-id": "r-1"})
    assert response.status_code == 200, response.text
    assert response.json() == {"job_id": "job-new", "status": "PENDING", "mlflow_ui": None}
    request = recorder.requests["CreateTrainingJob"]
    assert (request.dataset_id, request.target_column, request.task) == ("ds-1", "y", task)
    assert recorder.metadata["CreateTrainingJob"]["x-request-id"] == "r-1"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "loc", "kind"),
    [
        (b"not json", ["body"], "json_invalid"),
        (b"\xff\xfe{", ["body"], "json_invalid"),
        (b"[]", ["body"], "model_type"),
        (b'{"dataset_id": "ds-1"}', ["body", "target_col"], "missing"),
        (b'{"dataset_id": 7, "target_col": "y"}', ["body", "dataset_id"], "string_type"),
        (
            b'{"dataset_id": "ds-1", "target_col": "y", "task_type": "clustering"}',
            ["body", "task_type"],
            "literal_error",
        ),
    ],
    ids=["not json", "not utf-8", "array", "missing field", "wrong type", "unknown task_type"],
)
async def test_train_with_a_malformed_body_is_422_and_calls_nothing(
    gateway: GatewayProcess, recorder: Recorder, content: bytes, loc: list[str], kind: str
) -> None:
    async with gateway.client() as client:
        response = await client.post(
            "/models/train", content=content, headers={"content-type": "application/json"}
        )
    detail = await old_error(response, 422, "REQUEST_BODY_INVALID")
    assert [(item["loc"], item["type"]) for item in detail][:1] == [(loc, kind)]
    assert "CreateTrainingJob" not in recorder.requests


@pytest.mark.slow
async def test_unknown_dataset_and_job_are_404_in_the_old_words(gateway: GatewayProcess) -> None:
    async with gateway.client() as client:
        train = await client.post("/models/train", json={"dataset_id": MISSING, "target_col": "y"})
        job = await client.get(f"/models/jobs/{MISSING}")
    assert await old_error(train, 404, "DATASET_NOT_FOUND") == "Dataset not found"
    assert await old_error(job, 404, "JOB_NOT_FOUND") == "Job not found"


@pytest.mark.slow
async def test_get_job_is_get_training_job_in_the_old_shape(gateway: GatewayProcess) -> None:
    async with gateway.client() as client:
        response = await client.get("/models/jobs/job-7")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "id": "job-7",
        "dataset_id": "ds-1",
        "target_col": "label",
        "task_type": "classification",
        "model_name": None,
        "status": "RUNNING",
        "mlflow_run_id": None,
        "model_uri": None,
        "metrics": {"accuracy": 0.93, "roc_auc": None},  # NaN has no JSON: null
        "error_message": None,
        "created_at": "2023-11-14T22:13:20+00:00",
        "mlflow_ui": None,
    }


@pytest.mark.slow
async def test_the_same_bearer_token_is_required(gateway: GatewayProcess) -> None:
    async with gateway.client(token=None) as client:
        response = await client.get("/models/jobs/job-7")
    await old_error(response, 401, "API_TOKEN_MISSING")
    assert response.headers["www-authenticate"].startswith("Bearer")
    async with gateway.client(token="wrong") as client:
        response = await client.post("/models/train", json={})
    await old_error(response, 401, "API_TOKEN_INVALID")


@pytest.mark.slow
async def test_a_wrong_method_is_405_with_allow(gateway: GatewayProcess) -> None:
    async with gateway.client() as client:
        response = await client.get("/models/train")
    await old_error(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers["allow"] == "POST"


@pytest.mark.slow
async def test_openapi_lists_them_deprecated_with_their_successors(
    gateway: GatewayProcess,
) -> None:
    async with gateway.client(token=None) as client:
        document = (await client.get("/openapi.json")).json()
    successors = {
        ("/datasets/upload", "post"): "POST /v1/datasets",
        ("/models/train", "post"): "POST /v1/trainingJobs",
        ("/models/jobs/{job_id}", "get"): "GET /v1/trainingJobs/{job_id}",
    }
    for (path, method), successor in successors.items():
        operation = document["paths"][path][method]
        assert operation["deprecated"] is True
        assert f"use `{successor}`" in operation["description"]


@pytest.mark.slow
async def test_the_switch_turns_them_off(dev_gateway: GatewayProcess) -> None:
    async with dev_gateway.client(token=None) as client:
        response = await client.post("/models/train", json={"dataset_id": "d", "target_col": "y"})
        document = (await client.get("/openapi.json")).json()
    assert response.status_code == 404
    assert response.json()["error"]["details"][0]["reason"] == "ROUTE_NOT_FOUND"
    assert "/models/train" not in document["paths"]
