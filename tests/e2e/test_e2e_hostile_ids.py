"""Over-long ids and names, through REST and gRPC, on the whole stack: the answer is
a 400 or 404 with a bounded message and its reason, never a 429 or RESOURCE_EXHAUSTED
from gRPC's limit on the size of the trailers an error travels in (before the
bound, a 20 kB dataset id through REST was a 429 "received metadata size exceeds
hard limit", and through gRPC a RESOURCE_EXHAUSTED without a reason)."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest

from devstack.stack import Stack
from modelyard.dataset.v1 import dataset_service_pb2, dataset_service_pb2_grpc
from modelyard.jobs.v1 import jobs_service_pb2, jobs_service_pb2_grpc
from modelyard.training.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from runtime.channels import open_channel
from runtime.errors import MAX_STATUS_MESSAGE_CHARS, error_reason
from runtime.settings import CommonSettings

pytestmark = pytest.mark.e2e

HOSTILE = "x" * 100_000
# Far over any id's limit, yet within the gateway's URL limit (8 kB; a longer URL is
# answered 414 URL_TOO_LONG before any service sees it): the services' own checks answer.
IN_URL = "x" * 4_000


def send(stack: Stack, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, str]:
    """One request with http.client: httpx refuses to send URLs over 64 kB."""
    url = urlsplit(stack.gateway_url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=60)
    headers = {"Authorization": f"Bearer {stack.api_token}"}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def refusal(status: int, text: str) -> tuple[int, str]:
    error = json.loads(text)["error"]
    assert len(error["message"]) <= MAX_STATUS_MESSAGE_CHARS
    reasons = [d["reason"] for d in error.get("details", []) if "reason" in d]
    return status, reasons[0] if reasons else ""


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("GET", f"/v1/datasets/{IN_URL}", None, {400, 404}),
        ("GET", f"/v1/trainingJobs/{IN_URL}", None, {400}),
        ("POST", f"/v1/trainingJobs/{IN_URL}:cancel", {}, {400}),
        ("GET", f"/v1/models/{IN_URL}", None, {400}),
        ("POST", f"/v1/models/{IN_URL}:predict", {"rows": [{"a": 1}]}, {400}),
        ("POST", "/v1/trainingJobs", {"datasetId": HOSTILE, "targetColumn": "y"}, {400}),
        (
            "POST",
            "/v1/trainingJobs",
            {"datasetId": "d", "targetColumn": "y", "requestId": HOSTILE},
            {400},
        ),
    ],
)
def test_rest_answers_a_bounded_client_error(
    stack: Stack, method: str, path: str, body: dict[str, Any] | None, expected: set[int]
) -> None:
    status, text = send(stack, method, path, body)
    assert status in expected, text[:500]
    assert len(text) < 10_000
    assert refusal(status, text)[1]


async def test_grpc_answers_a_bounded_client_error(stack: Stack) -> None:
    settings = CommonSettings(service_token=stack.service_token)
    outcomes = []
    async with (
        open_channel(stack.addresses["dataset"], settings) as datasets,
        open_channel(stack.addresses["jobs"], settings) as jobs,
        open_channel(stack.addresses["trainer"], settings) as trainer,
    ):
        attempts = [
            dataset_service_pb2_grpc.DatasetServiceStub(datasets).GetDataset(
                dataset_service_pb2.GetDatasetRequest(dataset_id=HOSTILE)
            ),
            jobs_service_pb2_grpc.JobsServiceStub(jobs).GetTrainingJob(
                jobs_service_pb2.GetTrainingJobRequest(job_id=HOSTILE)
            ),
            trainer_service_pb2_grpc.TrainerServiceStub(trainer).GetModel(
                trainer_service_pb2.GetModelRequest(model_name=HOSTILE)
            ),
        ]
        for attempt in attempts:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await attempt
            error = failed.value
            outcomes.append((error.code(), error_reason(error), len(error.details() or "")))
    for code, reason, message_length in outcomes:
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), outcomes
        assert reason
        assert message_length <= MAX_STATUS_MESSAGE_CHARS
