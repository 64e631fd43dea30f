"""The OpenAPI document: valid, generated from the annotations and the proto
comments, with every annotated RPC; the docs page from local assets; live
responses that conform to it; and a schemathesis run against a live gateway."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.api import annotations_pb2
from openapi_schema_validator import OAS30ReadValidator
from openapi_spec_validator import validate

from gateway.descriptors import Comments, load_services
from gateway.openapi import build_document
from gateway.routes import routes_of
from services.dataset import servicer as dataset_servicer
from tests.gateway.gateway_doubles import API_TOKENS, PUBLIC_URL, GatewayProcess

Document = dict[str, Any]


@pytest.fixture(scope="module")
def document() -> Document:
    return build_document(
        routes_of(load_services()),
        Comments.load(),
        title="t",
        version="v1",
        server_url="http://127.0.0.1:8080",
        legacy_routes=True,
    )


def response_validator(document: Document, schema: Document) -> OAS30ReadValidator:
    return OAS30ReadValidator({**schema, "components": document["components"]})


def operations(document: Document) -> dict[str, tuple[str, str, Document]]:
    """gRPC method path → (HTTP method, OpenAPI path, operation)."""
    found = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if "x-grpc-method" in operation:
                found[operation["x-grpc-method"]] = (method.upper(), path, operation)
    return found


def test_document_is_valid_openapi_3(document: Document) -> None:
    validate(document)
    assert document["openapi"].startswith("3.0")
    assert document["servers"] == [{"url": "http://127.0.0.1:8080", "description": "This gateway."}]


def test_every_annotated_rpc_is_an_operation_at_its_annotated_route(document: Document) -> None:
    expected = {}
    for service in load_services():
        for method in service.methods:
            rule = method.GetOptions().Extensions[annotations_pb2.http]
            pattern = rule.WhichOneof("pattern")
            assert pattern is not None, f"{method.full_name} has no google.api.http annotation"
            expected[f"/{service.full_name}/{method.name}"] = (
                pattern.upper(),
                getattr(rule, pattern),
            )
    found = {rpc: (method, path) for rpc, (method, path, _) in operations(document).items()}
    assert found == expected


def test_descriptions_come_from_the_proto_comments(document: Document) -> None:
    _, _, get_job = operations(document)["/modelyard.jobs.v1.JobsService/GetTrainingJob"]
    assert get_job["summary"] == "Gets one training job."
    job = document["components"]["schemas"]["modelyard.jobs.v1.TrainingJob"]
    assert job["description"].startswith("A request to train a model")
    assert job["properties"]["targetColumn"]["description"].startswith("The column to predict.")
    state = document["components"]["schemas"]["modelyard.jobs.v1.TrainingJob.State"]
    assert "QUEUED" in state["enum"]
    assert "- `CANCELLING`: Cancel requested" in state["description"]


def test_schemas_follow_the_proto3_json_mapping(document: Document) -> None:
    schemas = document["components"]["schemas"]
    job = schemas["modelyard.jobs.v1.TrainingJob"]
    properties = job["properties"]
    assert set(job["required"]) == {"datasetId", "targetColumn"}  # field_behavior REQUIRED
    assert properties["jobId"]["readOnly"] is True  # OUTPUT_ONLY
    assert properties["createTime"]["format"] == "date-time"
    assert properties["maxRunDuration"]["pattern"].endswith("s$")
    assert properties["params"]["additionalProperties"] == {"type": "string"}
    assert properties["state"]["allOf"] == [
        {"$ref": "#/components/schemas/modelyard.jobs.v1.TrainingJob.State"}
    ]
    version = schemas["modelyard.jobs.v1.MlflowRun"]["properties"]["registeredModelVersion"]
    assert version["anyOf"][0]["type"] == "string"  # int64 is written as a string
    metrics = properties["metrics"]["additionalProperties"]["anyOf"]
    assert {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]} in metrics
    status = schemas["google.rpc.Status"]["properties"]
    assert status["details"]["items"]["required"] == ["@type"]


def test_operations_document_their_bodies_and_parameters(document: Document) -> None:
    ops = operations(document)
    _, _, upload = ops["/modelyard.dataset.v1.DatasetService/UploadDataset"]
    assert {"text/csv", "application/octet-stream", "application/gzip"} <= set(
        upload["requestBody"]["content"]
    )
    assert [p["name"] for p in upload["parameters"]] == [
        "displayName",
        "delimiter",
        "hasHeader",
        "requestId",
        "newVersionOf",
        "sheet",
    ]
    _, _, download = ops["/modelyard.dataset.v1.DatasetService/DownloadDataset"]
    # CSV first (the usual upload), then every type the Dataset service labels files with.
    documented = list(download["responses"]["200"]["content"])
    assert documented[0] == "text/csv"
    labelled = {
        *dataset_servicer._CONTENT_TYPES.values(),
        *dataset_servicer._COMPRESSED_TYPES.values(),
    }
    assert labelled <= set(documented)
    _, _, watch = ops["/modelyard.jobs.v1.JobsService/WatchTrainingJob"]
    event = watch["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert event["properties"]["event"]["enum"] == ["job", "error"]
    _, _, listing = ops["/modelyard.jobs.v1.JobsService/ListTrainingJobs"]
    assert [p["name"] for p in listing["parameters"]] == [
        "pageSize",
        "pageToken",
        "state",
        "datasetId",
    ]
    _, _, cancel = ops["/modelyard.jobs.v1.JobsService/CancelTrainingJob"]
    assert cancel["parameters"][0] == {
        "name": "job_id",
        "in": "path",
        "required": True,
        "description": "The job to cancel.",
        "schema": {"type": "string", "minLength": 1},
    }
    cancel_body = cancel["requestBody"]
    assert cancel_body["required"] is False
    assert cancel_body["content"]["application/json"]["schema"]["properties"] == {}
    _, _, create = ops["/modelyard.jobs.v1.JobsService/CreateTrainingJob"]
    assert create["requestBody"]["required"] is True
    _, _, predict = ops["/modelyard.training.v1.TrainerService/Predict"]
    body = predict["requestBody"]["content"]["application/json"]["schema"]
    assert not any("modelName" in shape["properties"] for shape in body["oneOf"])  # path
    # The version_selector oneof: closed shapes, exactly one of which matches.
    shapes = {shape["title"]: shape for shape in body["oneOf"]}
    assert list(shapes) == [
        "PredictRequestWithoutVersionSelector",
        "PredictRequestWithVersion",
        "PredictRequestWithAlias",
    ]
    rows_or_columns = {"rows", "columns", "explain"}
    assert set(shapes["PredictRequestWithoutVersionSelector"]["properties"]) == rows_or_columns
    assert set(shapes["PredictRequestWithVersion"]["properties"]) == rows_or_columns | {"version"}
    assert shapes["PredictRequestWithAlias"]["required"] == ["alias"]
    # `columns`: column name → a JSON array of values.
    columns = shapes["PredictRequestWithoutVersionSelector"]["properties"]["columns"]
    assert columns["type"] == "object"
    assert columns["additionalProperties"]["type"] == "array"
    assert all(shape["additionalProperties"] is False for shape in shapes.values())
    assert '"not":' not in json.dumps(document)  # no `not: {required: ...}` anywhere


@pytest.mark.parametrize(
    ("body", "matching"),
    [
        ({"rows": [{"a": 1}]}, ["PredictRequestWithoutVersionSelector"]),
        ({"rows": [{"a": 1}], "version": "3"}, ["PredictRequestWithVersion"]),
        ({"rows": [{"a": 1}], "alias": "champion"}, ["PredictRequestWithAlias"]),
        ({"rows": [{"a": 1}], "version": "3", "alias": "champion"}, []),
        ({"columns": {"a": [1, None], "b": ["x", "y"]}}, ["PredictRequestWithoutVersionSelector"]),
        ({"columns": {"a": [1]}, "version": "3"}, ["PredictRequestWithVersion"]),
        ({"columns": {"a": 1}}, []),
    ],
)
def test_predict_body_shapes_take_at_most_one_version_selector(
    document: Document, body: Document, matching: list[str]
) -> None:
    _, _, predict = operations(document)["/modelyard.training.v1.TrainerService/Predict"]
    schema = predict["requestBody"]["content"]["application/json"]["schema"]
    matched = [
        shape["title"]
        for shape in schema["oneOf"]
        if response_validator(document, shape).is_valid(body)
    ]
    assert matched == matching


def test_every_operation_declares_its_client_errors(document: Document) -> None:
    error = {"$ref": "#/components/responses/Error"}
    for method, path, operation in operations(document).values():
        responses = operation["responses"]
        expected = {"400": error, "401": error} | ({"404": error} if "{" in path else {})
        assert {code: r for code, r in responses.items() if code.startswith("4")} == expected, (
            f"{method} {path}"
        )
        assert responses["default"] == error
    error_body = document["components"]["responses"]["Error"]["content"]["application/json"]
    assert error_body["schema"] == {"$ref": "#/components/schemas/Error"}


REDOCLY = Path(__file__).resolve().parents[2] / "tools" / "node_modules" / ".bin" / "redocly"
# Warnings of Redocly's recommended rules the document keeps, each for a reason: the
# probes answer 200 or 503 and nothing in 4xx; the project declares no licence.
ALLOWED_REDOCLY_WARNINGS = {
    ("operation-4xx-response", "#/paths/~1healthz/get/responses"),
    ("operation-4xx-response", "#/paths/~1readyz/get/responses"),
    ("info-license", "#/info"),
}


def test_redocly_recommended_rules_find_no_error(document: Document, tmp_path: Path) -> None:
    if not REDOCLY.exists():
        pytest.fail("tools/node_modules/.bin/redocly is missing: run `make install`")
    (tmp_path / "openapi.json").write_text(json.dumps(document))
    result = subprocess.run(
        [str(REDOCLY), "lint", "openapi.json", "--format=json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true"},
    )
    report = json.loads(result.stdout[result.stdout.index("{") :])
    problems = {
        (problem["ruleId"], problem["severity"], problem["location"][0]["pointer"])
        for problem in report["problems"]
    }
    errors = {problem for problem in problems if problem[1] == "error"}
    warnings = {(rule, pointer) for rule, severity, pointer in problems if severity == "warn"}
    assert errors == set()
    assert warnings == ALLOWED_REDOCLY_WARNINGS
    assert result.returncode == 0, result.stderr


def test_security_is_bearer_except_for_probes(document: Document) -> None:
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["security"] == [{"bearerAuth": []}]
    assert document["paths"]["/healthz"]["get"]["security"] == []
    assert document["paths"]["/readyz"]["get"]["security"] == []


@pytest.mark.slow
async def test_served_document_and_docs_page_work_offline(gateway: GatewayProcess) -> None:
    async with gateway.client(token=None) as client:
        served = await client.get("/openapi.json")
        page = await client.get("/docs")
        script = await client.get("/docs/static/docs-init.js")
        assets = [await client.get(src) for src in re.findall(r'(?:src|href)="([^"]+)"', page.text)]
        missing = await client.get("/docs/static/../settings.py")
    assert served.status_code == 200
    validate(served.json())
    assert served.json()["servers"][0]["url"] == gateway.url  # from the request
    assert page.headers["content-type"].startswith("text/html")
    assert "swagger-ui-bundle.js" in page.text
    assert not re.search(r"https?://", page.text + script.text)  # nothing from a CDN
    assert [asset.status_code for asset in assets] == [200] * len(assets)
    assert len(assets) >= 4
    assert any(len(asset.content) > 500_000 for asset in assets)  # Swagger UI itself
    assert missing.status_code == 404


@pytest.mark.slow
async def test_live_responses_conform_to_the_document(gateway: GatewayProcess) -> None:
    async with gateway.client() as client:
        document = (await client.get("/openapi.json")).json()
        calls = [
            ("get", "/v1/trainingJobs/{job_id}", await client.get("/v1/trainingJobs/j-1")),
            ("get", "/v1/trainingJobs", await client.get("/v1/trainingJobs")),
            (
                "post",
                "/v1/trainingJobs",
                await client.post("/v1/trainingJobs", json={"datasetId": "d", "targetColumn": "y"}),
            ),
            ("get", "/v1/datasets/{dataset_id}", await client.get("/v1/datasets/d-1")),
            ("delete", "/v1/datasets/{dataset_id}", await client.delete("/v1/datasets/d-1")),
            ("get", "/v1/models/{model_name}", await client.get("/v1/models/m")),
            (
                "post",
                "/v1/models/{model_name}:predict",
                await client.post("/v1/models/m:predict", json={"rows": [{"a": 1}]}),
            ),
            (
                "get",
                "/v1/trainingJobs/{job_id}",
                await client.get("/v1/trainingJobs/error-ABORTED"),
            ),
            ("get", "/readyz", await client.get("/readyz")),
        ]
    for method, path, response in calls:
        responses = document["paths"][path][method]["responses"]
        documented = responses.get(str(response.status_code)) or responses["default"]
        if "$ref" in documented:
            documented = document["components"]["responses"]["Error"]
        schema = documented["content"]["application/json"]["schema"]
        response_validator(document, schema).validate(response.json())
        for header in documented.get("headers", {}):
            assert header.lower() in response.headers


@pytest.mark.slow
async def test_schemathesis_finds_no_server_error_nor_nonconforming_response(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    checks = ",".join(
        [
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_headers_conformance",
            "response_schema_conformance",
            "unsupported_method",
            "allow_header_conformance",
        ]
    )
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{gateway.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {API_TOKENS[0]}",
        "--checks",
        checks,
        "--max-examples",
        "15",
        "--seed",
        "20261126",
        "--workers",
        "1",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=300)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-6000:]
    async with gateway.client() as client:
        document = (await client.get("/openapi.json")).json()
    operations = sum(len(item) for item in document["paths"].values())
    assert f"Tested: {operations}" in text  # every operation, the legacy routes too


@pytest.mark.slow
async def test_servers_name_the_host_asked_or_the_configured_url(
    gateway: GatewayProcess, dev_gateway: GatewayProcess
) -> None:
    async with gateway.client(token=None) as client:
        proxied = await client.get("/openapi.json", headers={"Host": "api.internal:9443"})
    async with dev_gateway.client(token=None) as client:
        configured = await client.get("/openapi.json", headers={"Host": "api.internal:9443"})
    assert proxied.json()["servers"][0]["url"] == "http://api.internal:9443"
    assert configured.json()["servers"][0]["url"] == PUBLIC_URL


@pytest.mark.slow
async def test_a_docs_page_asset_outside_the_list_is_not_served(gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        response = await client.get("/docs/static/index.html")
    assert response.status_code == 404
    body: Document = json.loads(response.content)
    assert body["error"]["details"][0]["reason"] == "ROUTE_NOT_FOUND"
