"""Projects and scoped API tokens on the whole stack as real processes (nats-server,
MLflow, PostgreSQL when it answers, the three services and the gateway): tokens made
through the admin API act with their role only, stop working when revoked or
expired, are stored as hashes, and reach the services over gRPC directly too.

The gateway runs with MODELYARD_GATEWAY_API_TOKEN_CACHE_SECONDS=0, so that a revoke
shows at once (the cache's own delay is the setting's documented behaviour).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from sqlalchemy import text

from devstack.components import postgres_available
from devstack.stack import Stack, StackOptions
from modelyard.dataset.v1 import dataset_service_pb2, dataset_service_pb2_grpc
from modelyard.jobs.v1 import jobs_service_pb2, jobs_service_pb2_grpc
from modelyard.training.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from runtime.db import create_engine
from runtime.errors import error_reason
from tests.suite_support import mlflow_client_of, wait_final

pytestmark = pytest.mark.slow

IRIS = Path(__file__).resolve().parents[2] / "devstack" / "samples" / "iris.csv"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    options = StackOptions(
        work_dir=tmp_path_factory.mktemp("projects-stack"),
        database="postgresql" if postgres_available() else "sqlite",
        extra_env={"gateway": {"MODELYARD_GATEWAY_API_TOKEN_CACHE_SECONDS": "0"}},
    )
    with Stack(options) as running:
        yield running


def client(stack: Stack, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


@pytest.fixture
def operator(stack: Stack) -> Iterator[httpx.Client]:
    """The configured token: an admin of `default`, as every existing client has."""
    with client(stack, stack.api_token) as http:
        yield http


def make_token(
    admin: httpx.Client, role: str, project: str = "default", **extra: Any
) -> dict[str, Any]:
    response = admin.post(
        f"/v1/projects/{project}/apiTokens",
        json={"role": role, "displayName": f"{role} of the test", **extra},
    )
    assert response.status_code == 200, response.text
    made: dict[str, Any] = response.json()
    assert made["secret"].startswith(f"myk_{made['apiToken']['tokenId']}_")
    return made


def reason_of(response: httpx.Response) -> str:
    details = response.json()["error"]["details"]
    return str(next(d["reason"] for d in details if "reason" in d))


def upload_iris(http: httpx.Client) -> dict[str, Any]:
    response = http.post(
        "/v1/datasets",
        params={"displayName": "iris"},
        content=IRIS.read_bytes(),
        headers={"Content-Type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    dataset: dict[str, Any] = response.json()
    return dataset


def test_a_trainer_token_uploads_and_trains_to_success(
    stack: Stack, operator: httpx.Client
) -> None:
    trainer = make_token(operator, "ROLE_TRAINER")
    assert trainer["apiToken"]["role"] == "ROLE_TRAINER"
    with client(stack, trainer["secret"]) as http:
        dataset = upload_iris(http)
        created = http.post(
            "/v1/trainingJobs",
            json={"datasetId": dataset["datasetId"], "targetColumn": "species"},
        )
        assert created.status_code == 200, created.text
        job = wait_final(http, f"/v1/trainingJobs/{created.json()['jobId']}", 180)
        assert job["state"] == "SUCCEEDED", job.get("error")
        # A trainer manages no tokens.
        refused = http.post("/v1/projects/default/apiTokens", json={"role": "ROLE_VIEWER"})
        assert refused.status_code == 403
        assert reason_of(refused) == "ROLE_INSUFFICIENT"


def test_a_viewer_token_reads_but_gets_403_on_create(stack: Stack, operator: httpx.Client) -> None:
    dataset = upload_iris(operator)
    viewer = make_token(operator, "ROLE_VIEWER")
    with client(stack, viewer["secret"]) as http:
        assert http.get(f"/v1/datasets/{dataset['datasetId']}").status_code == 200
        assert http.get("/v1/trainingJobs").status_code == 200
        created = http.post(
            "/v1/trainingJobs",
            json={"datasetId": dataset["datasetId"], "targetColumn": "species"},
        )
        assert created.status_code == 403, created.text
        assert reason_of(created) == "ROLE_INSUFFICIENT"
        uploaded = http.post(
            "/v1/datasets", content=IRIS.read_bytes(), headers={"Content-Type": "text/csv"}
        )
        assert uploaded.status_code == 403
        deleted = http.delete(f"/v1/datasets/{dataset['datasetId']}")
        assert deleted.status_code == 403
    # Nothing was changed by the refused calls.
    assert operator.get(f"/v1/datasets/{dataset['datasetId']}").status_code == 200


def test_a_revoked_token_gets_401(stack: Stack, operator: httpx.Client) -> None:
    viewer = make_token(operator, "ROLE_VIEWER")
    token_id = viewer["apiToken"]["tokenId"]
    with client(stack, viewer["secret"]) as http:
        assert http.get("/v1/datasets").status_code == 200
        revoked = operator.delete(f"/v1/projects/default/apiTokens/{token_id}")
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["apiToken"]["revokeTime"]
        refused = http.get("/v1/datasets")
        assert refused.status_code == 401
        assert reason_of(refused) == "API_TOKEN_INVALID"
    listed = operator.get("/v1/projects/default/apiTokens").json()["apiTokens"]
    assert [t["revokeTime"] for t in listed if t["tokenId"] == token_id] != [None]


def test_an_expired_token_gets_401(stack: Stack, operator: httpx.Client) -> None:
    short = make_token(operator, "ROLE_VIEWER", expiresIn="1s")
    with client(stack, short["secret"]) as http:
        assert http.get("/v1/datasets").status_code == 200
        time.sleep(1.5)
        refused = http.get("/v1/datasets")
    assert refused.status_code == 401
    assert reason_of(refused) == "API_TOKEN_EXPIRED"


def test_a_made_up_token_of_the_right_shape_gets_401(stack: Stack) -> None:
    with client(stack, "myk_0123456789abcdef_not-a-secret") as http:
        refused = http.get("/v1/datasets")
    assert refused.status_code == 401
    assert reason_of(refused) == "API_TOKEN_INVALID"


def test_secrets_are_stored_hashed_and_never_listed(stack: Stack, operator: httpx.Client) -> None:
    made = make_token(operator, "ROLE_ADMIN")
    token_id = made["apiToken"]["tokenId"]
    secret = made["secret"].split("_", 2)[2]
    rows = asyncio.run(token_rows(stack.database_urls["jobs"]))
    row = rows[token_id]
    assert row["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert not any(secret in str(value) for value in row.values())
    listed = operator.get("/v1/projects/default/apiTokens")
    assert listed.status_code == 200
    assert secret not in listed.text
    assert token_id in listed.text


async def token_rows(database_url: str) -> dict[str, dict[str, Any]]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(text("SELECT * FROM api_tokens"))
            return {row["token_id"]: dict(row) for row in result.mappings()}
    finally:
        await engine.dispose()


def test_another_projects_admin_sees_default_as_unknown(
    stack: Stack, operator: httpx.Client
) -> None:
    created = operator.post("/v1/projects", json={"projectId": "team-b", "displayName": "B"})
    assert created.status_code == 200, created.text
    admin_b = make_token(operator, "ROLE_ADMIN", project="team-b")
    with client(stack, admin_b["secret"]) as http:
        other = http.get("/v1/projects/default/apiTokens")
        assert other.status_code == 404
        assert reason_of(other) == "PROJECT_NOT_FOUND"
        assert [p["projectId"] for p in http.get("/v1/projects").json()["projects"]] == ["team-b"]
        refused = http.post("/v1/projects", json={"projectId": "team-c"})
        assert refused.status_code == 403
        own = make_token(http, "ROLE_VIEWER", project="team-b")
        assert own["apiToken"]["projectId"] == "team-b"
        # The internal token check is for modelyard's services only.
        probe = http.post("/v1/apiTokens:authenticate", json={"token": own["secret"]})
        assert probe.status_code == 403


def test_dataset_versions_are_counted_per_project(stack: Stack, operator: httpx.Client) -> None:
    """Two projects each upload "iris" twice: each has versions 1 and 2 of its own, and no
    number or lookup by name tells one project about the other's datasets."""
    token_a = project_with_trainer(operator, "versions-a")
    token_b = project_with_trainer(operator, "versions-b")
    with client(stack, token_a) as a, client(stack, token_b) as b:
        uploads: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
        for _ in range(2):  # interleaved, so a shared counter would show
            uploads["a"].append(upload_iris(a))
            uploads["b"].append(upload_iris(b))
        for http, own, other in ((a, uploads["a"], uploads["b"]), (b, uploads["b"], uploads["a"])):
            assert [int(d["version"]) for d in own] == [1, 2]  # int64: a JSON string
            listed = http.get("/v1/datasets:versions", params={"displayName": "iris"})
            assert listed.status_code == 200, listed.text
            ids = [(d["datasetId"], int(d["version"])) for d in listed.json()["datasets"]]
            assert ids == [(own[1]["datasetId"], 2), (own[0]["datasetId"], 1)]
            for reference, expected in (("iris", own[1]), ("iris@1", own[0])):
                found = http.get("/v1/datasets:lookup", params={"reference": reference})
                assert found.status_code == 200, found.text
                assert found.json()["dataset"]["datasetId"] == expected["datasetId"]
            missing = http.get("/v1/datasets:lookup", params={"reference": "iris@3"})
            assert missing.status_code == 404
            assert reason_of(missing) == "DATASET_NOT_FOUND"
            # A new version of a name continues the project's own count.
            third = http.post(
                "/v1/datasets",
                params={"newVersionOf": "iris"},
                content=IRIS.read_bytes(),
                headers={"Content-Type": "text/csv"},
            )
            assert third.status_code == 200, third.text
            assert int(third.json()["version"]) == 3
            assert third.json()["datasetId"] not in {d["datasetId"] for d in other}
            assert third.json()["projectId"] == own[0]["projectId"]


def test_an_api_token_works_over_grpc_directly_on_the_jobs_service(
    stack: Stack, operator: httpx.Client
) -> None:
    viewer = make_token(operator, "ROLE_VIEWER")["secret"]
    asyncio.run(grpc_calls(stack.addresses["jobs"], viewer))


async def grpc_calls(address: str, token: str) -> None:
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = jobs_service_pb2_grpc.JobsServiceStub(channel)
        await stub.ListTrainingJobs(jobs_service_pb2.ListTrainingJobsRequest(), metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CancelTrainingJob(
                jobs_service_pb2.CancelTrainingJobRequest(job_id="x"), metadata=metadata
            )
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(refused.value) == "ROLE_INSUFFICIENT"


def project_with_trainer(operator: httpx.Client, project: str) -> str:
    created = operator.post("/v1/projects", json={"projectId": project})
    assert created.status_code == 200, created.text
    return str(make_token(operator, "ROLE_TRAINER", project=project)["secret"])


def test_a_project_sees_404_for_another_projects_datasets_and_jobs(
    stack: Stack, operator: httpx.Client
) -> None:
    token_a = project_with_trainer(operator, "scope-a")
    token_b = project_with_trainer(operator, "scope-b")
    with client(stack, token_a) as a, client(stack, token_b) as b:
        dataset = upload_iris(a)
        assert dataset["projectId"] == "scope-a"
        dataset_id = dataset["datasetId"]
        job = a.post("/v1/trainingJobs", json={"datasetId": dataset_id, "targetColumn": "species"})
        assert job.status_code == 200, job.text
        job_id = job.json()["jobId"]
        assert job.json()["projectId"] == "scope-a"

        for path in (f"/v1/datasets/{dataset_id}", f"/v1/datasets/{dataset_id}:download"):
            hidden = b.get(path)
            assert hidden.status_code == 404, path
            assert reason_of(hidden) == "DATASET_NOT_FOUND"
        assert b.delete(f"/v1/datasets/{dataset_id}").status_code == 404
        by_name = b.post("/v1/trainingJobs", json={"datasetId": "iris", "targetColumn": "species"})
        assert by_name.status_code == 404, by_name.text
        by_id = b.post(
            "/v1/trainingJobs", json={"datasetId": dataset_id, "targetColumn": "species"}
        )
        assert by_id.status_code == 404
        assert reason_of(by_id) == "DATASET_NOT_FOUND"

        for path in (
            f"/v1/trainingJobs/{job_id}",
            f"/v1/trainingJobs/{job_id}/trials",
            f"/v1/trainingJobs/{job_id}:watch",
        ):
            hidden = b.get(path)
            assert hidden.status_code == 404, path
            assert reason_of(hidden) == "JOB_NOT_FOUND"
        cancel = b.post(f"/v1/trainingJobs/{job_id}:cancel", json={})
        assert cancel.status_code == 404
        # What B lists is B's only; A lists its own.
        b_upload = upload_iris(b)
        assert [d["datasetId"] for d in b.get("/v1/datasets").json()["datasets"]] == [
            b_upload["datasetId"]
        ]
        assert b.get("/v1/trainingJobs").json().get("trainingJobs", []) == []
        assert [j["jobId"] for j in a.get("/v1/trainingJobs").json()["trainingJobs"]] == [job_id]
        assert dataset_id not in operator.get("/v1/datasets").text
        # A request id is A's: B's retry with it neither gets A's job nor makes one.
        body = {"datasetId": dataset_id, "targetColumn": "species", "requestId": "scope-rid"}
        first = a.post("/v1/trainingJobs", json=body)
        assert first.status_code == 200, first.text
        b_body = body | {"datasetId": b_upload["datasetId"]}
        reused = b.post("/v1/trainingJobs", json=b_body)
        assert reused.status_code == 400, reused.text
        assert reason_of(reused) == "REQUEST_ID_IN_USE"
        assert first.json()["jobId"] not in reused.text
        # Nothing B tried changed A's dataset or job.
        assert a.get(f"/v1/datasets/{dataset_id}").json()["state"] == "READY"
        assert a.get(f"/v1/trainingJobs/{job_id}").json()["state"] != "CANCELLING"


def test_project_tokens_work_over_grpc_on_dataset_and_trainer_within_role_and_project(
    stack: Stack, operator: httpx.Client
) -> None:
    trainer = project_with_trainer(operator, "direct")
    viewer = make_token(operator, "ROLE_VIEWER", project="direct")["secret"]
    with client(stack, trainer) as http:
        own = upload_iris(http)["datasetId"]
    others = upload_iris(operator)["datasetId"]
    asyncio.run(direct_calls(stack, viewer, own, others))


async def direct_calls(stack: Stack, token: str, own: str, others: str) -> None:
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(stack.addresses["dataset"]) as channel:
        datasets = dataset_service_pb2_grpc.DatasetServiceStub(channel)
        listed = await datasets.ListDatasets(
            dataset_service_pb2.ListDatasetsRequest(), metadata=metadata
        )
        assert [d.dataset_id for d in listed.datasets] == [own]
        found = await datasets.GetDataset(
            dataset_service_pb2.GetDatasetRequest(dataset_id=own), metadata=metadata
        )
        assert found.project_id == "direct"
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await datasets.GetDataset(
                dataset_service_pb2.GetDatasetRequest(dataset_id=others), metadata=metadata
            )
        assert hidden.value.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await datasets.DeleteDataset(
                dataset_service_pb2.DeleteDatasetRequest(dataset_id=own), metadata=metadata
            )
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(refused.value) == "ROLE_INSUFFICIENT"
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await datasets.ListDatasets(
                dataset_service_pb2.ListDatasetsRequest(),
                metadata=(("authorization", "Bearer myk_0123456789abcdef_made-up"),),
            )
        assert bad.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert error_reason(bad.value) == "API_TOKEN_INVALID"
    async with grpc.aio.insecure_channel(stack.addresses["trainer"]) as channel:
        trainer = trainer_service_pb2_grpc.TrainerServiceStub(channel)
        await trainer.ListModels(trainer_service_pb2.ListModelsRequest(), metadata=metadata)


def train_to_success(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    created = http.post("/v1/trainingJobs", json=body)
    assert created.status_code == 200, created.text
    job = wait_final(http, f"/v1/trainingJobs/{created.json()['jobId']}", 180)
    assert job["state"] == "SUCCEEDED", job.get("error")
    return job


def test_models_are_per_project_in_mlflow_and_predict_sees_only_its_own(
    stack: Stack, operator: httpx.Client
) -> None:
    token_b = project_with_trainer(operator, "models-b")
    token_c = project_with_trainer(operator, "models-c")
    row = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    with client(stack, token_b) as b, client(stack, token_c) as c:
        dataset = upload_iris(b)
        job = train_to_success(
            b,
            {
                "datasetId": dataset["datasetId"],
                "targetColumn": "species",
                "registeredModelName": "shared-name",
            },
        )
        # The project's own name in modelyard; a name of its own in MLflow.
        assert job["mlflow"]["registeredModelName"] == "shared-name"
        assert job["mlflow"]["modelUri"].startswith("models:/models-b=shared-name/")

        model = b.get("/v1/models/shared-name")
        assert model.status_code == 200, model.text
        assert model.json()["name"] == "shared-name"
        assert [m["name"] for m in b.get("/v1/models").json()["models"]] == ["shared-name"]
        predicted = b.post("/v1/models/shared-name:predict", json={"rows": [row]})
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["modelName"] == "shared-name"

        # Another project, and default, do not see it by either name.
        for http, name in ((c, "shared-name"), (operator, "models-b=shared-name")):
            hidden = http.get(f"/v1/models/{name}")
            assert hidden.status_code in (400, 404), hidden.text
            refused = http.post(f"/v1/models/{name}:predict", json={"rows": [row]})
            assert refused.status_code in (400, 404), refused.text
        assert c.get("/v1/models").json().get("models", []) == []
        assert "models-b" not in operator.get("/v1/models").text

        # A scoring job of the project uses its model and stores its output there.
        scoring = b.post(
            "/v1/scoringJobs",
            json={"datasetId": dataset["datasetId"], "modelName": "shared-name"},
        )
        assert scoring.status_code == 200, scoring.text
        assert (
            c.post(
                "/v1/scoringJobs",
                json={"datasetId": dataset["datasetId"], "modelName": "shared-name"},
            ).status_code
            == 404
        )
        scoring_id = scoring.json()["jobId"]
        scored = wait_final(b, f"/v1/scoringJobs/{scoring_id}", 180)
        assert scored["state"] == "SUCCEEDED", scored.get("error")
        output_id = scored["output"]["datasetId"]
        output = b.get(f"/v1/datasets/{output_id}")
        assert output.status_code == 200
        assert output.json()["projectId"] == "models-b"
        assert operator.get(f"/v1/datasets/{output_id}").status_code == 404
        assert c.get(f"/v1/scoringJobs/{scoring_id}").status_code == 404

    assert stack.mlflow is not None
    with mlflow_client_of(stack.mlflow.url, stack.mlflow.username, stack.mlflow.password) as admin:
        experiment = admin.get_experiment(job["mlflow"]["experimentId"])
    assert experiment.name == "modelyard/models-b"


def all_pages(admin: httpx.Client, path: str, items: str, page_size: int) -> list[list[str]]:
    """The ids on each page of a list, following nextPageToken to the end."""
    pages: list[list[str]] = []
    params: dict[str, Any] = {"pageSize": page_size}
    while True:
        response = admin.get(path, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([item.get("tokenId") or item["projectId"] for item in body.get(items, [])])
        if not body.get("nextPageToken"):
            return pages
        params["pageToken"] = body["nextPageToken"]


def test_projects_and_tokens_list_page_by_page(stack: Stack, operator: httpx.Client) -> None:
    created = operator.post("/v1/projects", json={"projectId": "paged", "displayName": "P"})
    assert created.status_code == 200, created.text
    made = [make_token(operator, "ROLE_VIEWER", project="paged") for _ in range(5)]
    pages = all_pages(operator, "/v1/projects/paged/apiTokens", "apiTokens", 2)
    assert [len(page) for page in pages] == [2, 2, 1]
    # Newest first, each token once.
    newest_first = [token["apiToken"]["tokenId"] for token in reversed(made)]
    assert [token_id for page in pages for token_id in page] == newest_first
    projects = [p for page in all_pages(operator, "/v1/projects", "projects", 1) for p in page]
    assert len(projects) == len(set(projects))
    assert {"default", "paged"} <= set(projects)
