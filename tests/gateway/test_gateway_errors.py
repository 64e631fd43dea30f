"""Errors through a real gateway: every gRPC code to its google/rpc/code.proto HTTP
status with the backend's reason, the gateway's own refusals, deadlines and limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from tests.gateway.gateway_doubles import BODY_LIMIT, GatewayProcess, Recorder

pytestmark = pytest.mark.slow

CODE_TO_HTTP = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
}


def test_the_table_covers_every_error_code() -> None:
    assert set(CODE_TO_HTTP) == {c.name for c in grpc.StatusCode if c is not grpc.StatusCode.OK}


@pytest.mark.parametrize(("code", "http_status"), sorted(CODE_TO_HTTP.items()))
async def test_backend_error_becomes_google_error_json(
    gateway: GatewayProcess, code: str, http_status: int
) -> None:
    async with gateway.client() as client:
        response = await client.get(f"/v1/trainingJobs/error-{code}")
    assert response.status_code == http_status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {
            "code": http_status,
            "status": code,
            "message": f"fake failure {code}",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": f"FAKE_{code}",
                    "domain": "modelyard",
                    "metadata": {"name": f"error-{code}"},
                }
            ],
        }
    }


def reason(response: httpx.Response) -> str:
    details = response.json()["error"]["details"]
    return str(details[0]["reason"])


async def test_unknown_route_is_404_route_not_found(gateway: GatewayProcess) -> None:
    async with gateway.client() as client:
        response = await client.get("/v1/nothing/here")
    assert response.status_code == 404
    assert reason(response) == "ROUTE_NOT_FOUND"
    assert response.json()["error"]["status"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/trainingJobs/j1", "GET"),
        ("PATCH", "/v1/datasets/d1", "DELETE, GET"),
        ("GET", "/v1/trainingJobs/j1:cancel", "POST"),
        ("DELETE", "/v1/trainingJobs", "GET, POST"),
    ],
)
async def test_wrong_method_is_405_with_allow(
    gateway: GatewayProcess, method: str, path: str, allowed: str
) -> None:
    async with gateway.client() as client:
        response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert reason(response) == "METHOD_NOT_ALLOWED"


async def test_body_over_the_limit_is_413_whether_declared_or_chunked(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    big = b'{"datasetId": "' + b"x" * BODY_LIMIT + b'"}'

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    async with gateway.client() as client:
        declared = await client.post(
            "/v1/trainingJobs", content=big, headers={"content-type": "application/json"}
        )
        streamed = await client.post(
            "/v1/trainingJobs", content=chunked(), headers={"content-type": "application/json"}
        )
        just_under = await client.post(
            "/v1/trainingJobs", json={"datasetId": "x" * (BODY_LIMIT - 100), "targetColumn": "y"}
        )
    for response in (declared, streamed):
        assert response.status_code == 413
        assert reason(response) == "REQUEST_BODY_TOO_LARGE"
    assert just_under.status_code == 200


async def test_non_json_body_is_415(gateway: GatewayProcess) -> None:
    async with gateway.client() as client:
        response = await client.post(
            "/v1/trainingJobs", content=b"datasetId=x", headers={"content-type": "text/plain"}
        )
    assert response.status_code == 415
    assert reason(response) == "UNSUPPORTED_MEDIA_TYPE"


async def test_client_deadline_reaches_the_backend_and_504_when_exceeded(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    async with gateway.client() as client:
        quick = await client.get("/v1/trainingJobs/job-1", headers={"X-Request-Timeout": "7.5"})
        deadline = recorder.deadlines["GetTrainingJob"]
        default = await client.get("/v1/trainingJobs/job-1")
        default_deadline = recorder.deadlines["GetTrainingJob"]
        capped = await client.get("/v1/trainingJobs/job-1", headers={"Request-Timeout": "9999"})
        capped_deadline = recorder.deadlines["GetTrainingJob"]
        slow = await client.get("/v1/trainingJobs/slow", headers={"X-Request-Timeout": "0.3"})
    assert quick.status_code == default.status_code == capped.status_code == 200
    assert deadline is not None
    assert 6.5 < deadline < 7.6  # gRPC rounds the timeout header up a little
    assert default_deadline is not None
    assert 29 < default_deadline < 30.1  # the gateway's default
    assert capped_deadline is not None
    assert 59 < capped_deadline < 60.1  # capped by MODELYARD_GATEWAY_MAX_TIMEOUT_SECONDS
    assert slow.status_code == 504
    assert slow.json()["error"]["status"] == "DEADLINE_EXCEEDED"
    assert reason(slow) == "DEADLINE_EXCEEDED"


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "inf"])
async def test_bad_timeout_header_is_400(gateway: GatewayProcess, value: str) -> None:
    async with gateway.client() as client:
        response = await client.get("/v1/trainingJobs/job-1", headers={"X-Request-Timeout": value})
    assert response.status_code == 400
    assert reason(response) == "REQUEST_TIMEOUT_INVALID"


async def test_unreachable_backend_is_503_without_internal_addresses(
    lone_gateway: GatewayProcess,
) -> None:
    token = (lone_gateway.state_dir / "api-token").read_text().strip()
    async with lone_gateway.client(token) as client:
        response = await client.get("/v1/models")
        ready = await client.get("/readyz")
    assert response.status_code == 503
    assert reason(response) == "BACKEND_UNAVAILABLE"
    assert "127.0.0.1" not in response.text
    assert response.json()["error"]["details"][0]["metadata"] == {
        "service": "modelyard.training.v1.TrainerService"
    }
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "unavailable",
        "backends": {"dataset": "SERVING", "jobs": "SERVING", "trainer": "UNREACHABLE"},
    }


async def test_an_over_long_url_is_answered_with_a_status(gateway: GatewayProcess) -> None:
    async with gateway.client() as client:
        response = await client.get("/v1/datasets/" + "a" * 9000)
    assert response.status_code == 414
    assert reason(response) == "URL_TOO_LONG"
    assert response.json()["error"]["details"][0]["metadata"] == {"limit_bytes": "8192"}
    assert "a" * 600 not in gateway.logs()  # neither the log line nor its span keep it


async def test_a_url_past_the_http_parser_is_answered_with_a_status(
    gateway: GatewayProcess,
) -> None:
    """uvicorn refuses it before the app sees it; the answer is still a google.rpc.Status."""
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /v1/datasets/{'a' * 200_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert (error["status"], error["details"][0]["reason"]) == (
        "INVALID_ARGUMENT",
        "HTTP_REQUEST_INVALID",
    )
