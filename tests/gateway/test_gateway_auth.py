"""Bearer-token auth, dev mode, the generated token, open endpoints, request ids,
the service token towards the backends, and CORS, through real gateway processes."""

from __future__ import annotations

import json
import stat

import pytest

from tests.gateway.gateway_doubles import (
    API_TOKENS,
    CORS_ORIGIN,
    EXPIRED_TOKEN,
    SERVICE_TOKEN,
    TRAINER_TOKEN,
    VIEWER_TOKEN,
    GatewayProcess,
    Recorder,
)

pytestmark = pytest.mark.slow

OPEN_PATHS = ["/healthz", "/readyz", "/openapi.json", "/docs", "/docs/static/swagger-ui-bundle.js"]


async def test_request_without_token_is_401_missing(gateway: GatewayProcess) -> None:
    async with gateway.client(token=None) as client:
        response = await client.get("/v1/trainingJobs/job-1")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="modelyard"'
    error = response.json()["error"]
    assert error["status"] == "UNAUTHENTICATED"
    assert error["details"][0]["reason"] == "API_TOKEN_MISSING"


@pytest.mark.parametrize(
    "authorization", ["Bearer wrong-token", "Bearer token-on", "Basic dG9rZW4tb25l", "Bearer"]
)
async def test_wrong_token_is_401(gateway: GatewayProcess, authorization: str) -> None:
    async with gateway.client(token=None) as client:
        response = await client.get(
            "/v1/trainingJobs/job-1", headers={"authorization": authorization}
        )
    assert response.status_code == 401
    assert response.json()["error"]["details"][0]["reason"] in (
        "API_TOKEN_INVALID",
        "API_TOKEN_MISSING",
    )
    assert "token-one" not in response.text


async def test_unknown_route_without_token_says_401_not_404(gateway: GatewayProcess) -> None:
    async with gateway.client(token=None) as client:
        response = await client.get("/v1/secret-route")
    assert response.status_code == 401


@pytest.mark.parametrize("token", API_TOKENS)
async def test_every_configured_token_is_accepted(
    gateway: GatewayProcess, recorder: Recorder, token: str
) -> None:
    async with gateway.client(token=token) as client:
        response = await client.get("/v1/trainingJobs/job-1")
    assert response.status_code == 200
    # Backends see the service token, never the client's API token.
    assert recorder.metadata["GetTrainingJob"]["authorization"] == f"Bearer {SERVICE_TOKEN}"


async def test_scheme_is_case_insensitive(gateway: GatewayProcess) -> None:
    async with gateway.client(token=None) as client:
        response = await client.get(
            "/v1/trainingJobs/job-1", headers={"authorization": f"bearer {API_TOKENS[1]}"}
        )
    assert response.status_code == 200


@pytest.mark.parametrize("path", OPEN_PATHS)
async def test_probes_and_docs_need_no_token(gateway: GatewayProcess, path: str) -> None:
    async with gateway.client(token=None) as client:
        response = await client.get(path)
    assert response.status_code == 200, response.text


async def test_readiness_reports_every_backend(gateway: GatewayProcess) -> None:
    async with gateway.client(token=None) as client:
        response = await client.get("/readyz")
    assert response.json() == {
        "status": "ok",
        "backends": {"dataset": "SERVING", "jobs": "SERVING", "trainer": "SERVING"},
    }


async def test_dev_mode_needs_no_token_and_says_so_loudly(dev_gateway: GatewayProcess) -> None:
    async with dev_gateway.client(token=None) as client:
        response = await client.get("/v1/trainingJobs/job-1")
    assert response.status_code == 200
    warnings = [
        json.loads(line)
        for line in dev_gateway.logs().splitlines()
        if line.startswith("{") and "DEV MODE" in line
    ]
    assert warnings
    assert warnings[0]["level"] == "WARNING"


async def test_without_configured_tokens_one_is_generated_into_a_private_file(
    lone_gateway: GatewayProcess,
) -> None:
    token_file = lone_gateway.state_dir / "api-token"
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    logs = lone_gateway.logs()
    assert str(token_file.resolve()) in logs
    assert token not in logs
    async with lone_gateway.client(token=None) as anonymous:
        assert (await anonymous.get("/v1/trainingJobs/job-1")).status_code == 401
    async with lone_gateway.client(token=token) as client:
        assert (await client.get("/v1/trainingJobs/job-1")).status_code == 200


async def test_request_id_is_echoed_forwarded_and_logged(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    async with gateway.client() as client:
        given = await client.get("/v1/trainingJobs/job-1", headers={"X-Request-Id": "req-abc-123"})
        generated = await client.get("/v1/trainingJobs/job-1")
        refused = await client.get("/v1/nothing", headers={"X-Request-Id": "req-for-a-404"})
        odd = await client.get("/v1/trainingJobs/job-1", headers={"X-Request-Id": "bad id\t<>"})
    assert given.headers["x-request-id"] == "req-abc-123"
    assert refused.headers["x-request-id"] == "req-for-a-404"
    assert len(generated.headers["x-request-id"]) == 32
    assert odd.headers["x-request-id"] not in ("", "bad id\t<>")
    assert recorder.metadata["GetTrainingJob"]["x-request-id"] == odd.headers["x-request-id"]
    lines = [json.loads(line) for line in gateway.logs().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("request_id") == "req-abc-123"]
    assert len(access) == 1
    assert access[0]["status"] == 200
    assert access[0]["rpc"] == "/modelyard.jobs.v1.JobsService/GetTrainingJob"
    assert "elapsed_ms" in access[0]
    not_found = [line for line in lines if line.get("request_id") == "req-for-a-404"]
    assert not_found[0]["reason"] == "ROUTE_NOT_FOUND"


async def test_cors_preflight_and_simple_request_for_an_allowed_origin(
    gateway: GatewayProcess,
) -> None:
    async with gateway.client(token=None) as client:
        preflight = await client.options(
            "/v1/trainingJobs",
            headers={
                "origin": CORS_ORIGIN,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        refused = await client.options(
            "/v1/trainingJobs",
            headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
        )
    async with gateway.client() as client:
        simple = await client.get("/v1/trainingJobs/job-1", headers={"origin": CORS_ORIGIN})
        other = await client.get("/v1/trainingJobs/job-1", headers={"origin": "http://x.example"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == CORS_ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    assert simple.headers["access-control-allow-origin"] == CORS_ORIGIN
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
    assert "access-control-allow-origin" not in other.headers


async def test_cors_is_off_unless_configured(dev_gateway: GatewayProcess) -> None:
    async with dev_gateway.client(token=None) as client:
        response = await client.get("/v1/trainingJobs/job-1", headers={"origin": CORS_ORIGIN})
    assert "access-control-allow-origin" not in response.headers


async def test_configured_token_acts_as_admin_of_default(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    async with gateway.client() as client:
        response = await client.get("/v1/trainingJobs/job-1")
    assert response.status_code == 200
    metadata = recorder.metadata["GetTrainingJob"]
    assert metadata["x-modelyard-project"] == "default"
    assert metadata["x-modelyard-role"] == "admin"


async def test_project_token_is_forwarded_with_its_project_and_role(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    async with gateway.client(token=VIEWER_TOKEN) as client:
        response = await client.get("/v1/trainingJobs/job-1")
    assert response.status_code == 200, response.text
    metadata = recorder.metadata["GetTrainingJob"]
    assert metadata["x-modelyard-project"] == "team-b"
    assert metadata["x-modelyard-role"] == "viewer"
    assert metadata["authorization"] == f"Bearer {SERVICE_TOKEN}"
    assert VIEWER_TOKEN not in str(recorder.metadata)


async def test_viewer_gets_403_where_it_needs_trainer_and_the_trainer_passes(
    gateway: GatewayProcess, recorder: Recorder
) -> None:
    body = {"datasetId": "d-1", "targetColumn": "label"}
    async with gateway.client(token=VIEWER_TOKEN) as client:
        refused = await client.post("/v1/trainingJobs", json=body)
    assert refused.status_code == 403
    assert refused.json()["error"]["details"][0]["reason"] == "ROLE_INSUFFICIENT"
    assert "CreateTrainingJob" not in recorder.requests
    async with gateway.client(token=TRAINER_TOKEN) as client:
        accepted = await client.post("/v1/trainingJobs", json=body)
    assert accepted.status_code == 200, accepted.text


@pytest.mark.parametrize(
    ("token", "reason"),
    [(EXPIRED_TOKEN, "API_TOKEN_EXPIRED"), ("myk_0123456789abcdef_wrong", "API_TOKEN_INVALID")],
)
async def test_bad_project_token_is_401_with_its_reason(
    gateway: GatewayProcess, token: str, reason: str
) -> None:
    async with gateway.client(token=token) as client:
        response = await client.get("/v1/trainingJobs/job-1")
    assert response.status_code == 401
    assert response.json()["error"]["details"][0]["reason"] == reason
    assert "invalid_token" in response.headers["www-authenticate"]
