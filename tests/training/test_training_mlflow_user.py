"""The Trainer's MLflow user (least privilege), against a real MLflow server with basic
auth set up as every modelyard MLflow is (runtime/mlflow_setup.py): the Trainer trains and
registers as `modelyard-trainer`, never with the admin password; that user cannot manage
users nor read or change what another MLflow user made; a job into someone else's model
fails at once with a clear reason and leaves that model as it was."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from devstack.components import MlflowServer
from modelyard.training.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from runtime import mlflow_setup
from runtime.errors import error_reason
from tests.training.training_support import (
    SERVICE_TOKEN,
    Bus,
    DatasetServer,
    TrainerProcess,
    final_event,
    reason_of,
    sklearn_csv,
)

pytestmark = pytest.mark.slow

METADATA = (("authorization", f"Bearer {SERVICE_TOKEN}"),)


def call(
    server: MlflowServer, user: tuple[str, str], method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    """One MLflow REST call as `user`: (HTTP status, JSON body or {})."""
    token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    request = urllib.request.Request(
        server.url + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return error.code, {}


def admin(server: MlflowServer) -> tuple[str, str]:
    return (server.username, server.password)


def trainer_user(server: MlflowServer) -> tuple[str, str]:
    return (server.trainer_username, server.trainer_password)


def permission_of(server: MlflowServer, resource_type: str, resource_id: str) -> str:
    query = urllib.parse.urlencode(
        {
            "username": server.trainer_username,
            "resource_type": resource_type,
            "resource_id": resource_id,
        }
    )
    status, answer = call(
        server, admin(server), "GET", f"/api/3.0/mlflow/users/permissions/get?{query}"
    )
    assert status == 200, answer
    return str(answer["permission"])


def someone_elses_experiment_and_model(server: MlflowServer) -> tuple[str, str]:
    """An experiment and a registered model the admin made for something else."""
    suffix = uuid.uuid4().hex[:8]
    status, made = call(
        server, admin(server), "POST", "/api/2.0/mlflow/experiments/create",
        {"name": f"finance-{suffix}"},
    )  # fmt: skip
    assert status == 200, made
    model_name = f"finance-model-{suffix}"
    status, answer = call(
        server, admin(server), "POST", "/api/2.0/mlflow/registered-models/create",
        {"name": model_name, "description": "not modelyard's"},
    )  # fmt: skip
    assert status == 200, answer
    return str(made["experiment_id"]), model_name


def process_environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode(errors="replace").partition("=") for item in raw if item)
    return {key: value for key, _, value in pairs}


async def test_the_trainer_trains_and_registers_as_its_own_user_without_the_admin_password(
    trainer: TrainerProcess,
    bus: Bus,
    dataset_server: DatasetServer,
    data_dir: Path,
    mlflow_server: MlflowServer,
) -> None:
    environment = process_environment(trainer.process.pid)
    assert environment["MODELYARD_TRAINER_MLFLOW_USERNAME"] == "modelyard-trainer"
    assert environment["MODELYARD_TRAINER_MLFLOW_PASSWORD"] == mlflow_server.trainer_password
    assert all(mlflow_server.password not in value for value in environment.values())

    dataset_id = dataset_server.service.add_csv(sklearn_csv(data_dir, "wine"), "wine")
    model_name = f"own-{uuid.uuid4().hex[:8]}"
    job_id = await bus.submit(dataset_id, "target", model_name=model_name)
    final = final_event(await bus.wait_final(job_id))
    assert final.WhichOneof("kind") == "succeeded", final
    run = final.succeeded.mlflow

    # The model is the Trainer's own (MLflow gives its creator MANAGE), as is the
    # experiment it wrote the run to (made by the Trainer, or by setup and granted).
    assert permission_of(mlflow_server, "registered_model", model_name) == "MANAGE"
    assert permission_of(mlflow_server, "experiment", run.experiment_id) == "MANAGE"
    status, got = call(
        mlflow_server, trainer_user(mlflow_server), "GET",
        f"/api/2.0/mlflow/runs/get?run_id={run.run_id}",
    )  # fmt: skip
    assert status == 200
    assert got["run"]["data"]["tags"]  # the run it logged, readable by the user that logged it


def test_setup_grants_the_experiment_it_makes(mlflow_server: MlflowServer) -> None:
    status, found = call(
        mlflow_server, trainer_user(mlflow_server), "GET",
        "/api/2.0/mlflow/experiments/get-by-name?experiment_name=modelyard",
    )  # fmt: skip
    assert status == 200, found
    experiment_id = found["experiment"]["experiment_id"]
    assert permission_of(mlflow_server, "experiment", experiment_id) == "MANAGE"
    # Run again (a redeploy, a rotated password): still MANAGE, the new password works.
    rotated = "trn-" + uuid.uuid4().hex
    mlflow_setup.set_up(
        mlflow_server.url, admin(mlflow_server), (mlflow_server.trainer_username, rotated),
        ["modelyard"],
    )  # fmt: skip
    try:
        assert permission_of(mlflow_server, "experiment", experiment_id) == "MANAGE"
        status, _ = call(
            mlflow_server, (mlflow_server.trainer_username, rotated), "GET",
            f"/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}",
        )  # fmt: skip
        assert status == 200
    finally:
        mlflow_setup.set_up(
            mlflow_server.url, admin(mlflow_server), trainer_user(mlflow_server), ["modelyard"]
        )


def test_the_trainer_user_cannot_manage_users(mlflow_server: MlflowServer) -> None:
    user = trainer_user(mlflow_server)
    status, _ = call(
        mlflow_server, user, "POST", "/api/2.0/mlflow/users/create",
        {"username": "intruder", "password": "intruder-password"},
    )  # fmt: skip
    assert status == 403
    status, _ = call(
        mlflow_server, user, "PATCH", "/api/2.0/mlflow/users/update-admin",
        {"username": mlflow_server.trainer_username, "is_admin": True},
    )  # fmt: skip
    assert status == 403
    status, _ = call(
        mlflow_server, user, "PATCH", "/api/2.0/mlflow/users/update-password",
        {"username": mlflow_server.username, "password": "taken-over"},
    )  # fmt: skip
    assert status == 403
    status, _ = call(
        mlflow_server, admin(mlflow_server), "GET", "/api/2.0/mlflow/users/get?username=intruder"
    )
    assert status == 404


def test_the_trainer_user_cannot_read_or_change_what_it_was_not_granted(
    mlflow_server: MlflowServer,
) -> None:
    experiment_id, model_name = someone_elses_experiment_and_model(mlflow_server)
    user = trainer_user(mlflow_server)
    refused = [
        ("GET", f"/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}", None),
        ("POST", "/api/2.0/mlflow/experiments/update",
         {"experiment_id": experiment_id, "new_name": "renamed"}),
        ("POST", "/api/2.0/mlflow/runs/create", {"experiment_id": experiment_id}),
        ("POST", "/api/2.0/mlflow/experiments/delete", {"experiment_id": experiment_id}),
        ("GET", f"/api/2.0/mlflow/registered-models/get?name={model_name}", None),
        ("PATCH", "/api/2.0/mlflow/registered-models/update",
         {"name": model_name, "description": "changed"}),
        ("POST", "/api/2.0/mlflow/registered-models/set-tag",
         {"name": model_name, "key": "managed_by", "value": "modelyard"}),
        ("POST", "/api/2.0/mlflow/model-versions/create",
         {"name": model_name, "source": "mlflow-artifacts:/0/x"}),
        ("POST", "/api/3.0/mlflow/users/permissions/grant",
         {"username": mlflow_server.trainer_username, "resource_type": "registered_model",
          "resource_id": model_name, "permission": "MANAGE"}),
    ]  # fmt: skip
    for method, path, body in refused:
        status, answer = call(mlflow_server, user, method, path, body)
        assert status == 403, (method, path, answer)
    # Searches leave them out; the admin still sees both as they were.
    status, found = call(
        mlflow_server, user, "GET", "/api/2.0/mlflow/registered-models/search?max_results=1000"
    )
    assert status == 200
    assert model_name not in [model["name"] for model in found.get("registered_models", [])]
    status, found = call(
        mlflow_server, user, "POST", "/api/2.0/mlflow/experiments/search", {"max_results": 1000}
    )
    assert status == 200
    assert experiment_id not in [e["experiment_id"] for e in found.get("experiments", [])]
    status, model = call(
        mlflow_server, admin(mlflow_server), "GET",
        f"/api/2.0/mlflow/registered-models/get?name={model_name}",
    )  # fmt: skip
    assert status == 200
    assert model["registered_model"]["description"] == "not modelyard's"
    assert "tags" not in model["registered_model"]
    status, experiment = call(
        mlflow_server, admin(mlflow_server), "GET",
        f"/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}",
    )  # fmt: skip
    assert experiment["experiment"]["lifecycle_stage"] == "active"
    assert experiment["experiment"]["name"].startswith("finance-")


async def test_a_job_into_someone_elses_model_fails_at_once_and_leaves_it_alone(
    trainer: TrainerProcess,
    bus: Bus,
    dataset_server: DatasetServer,
    data_dir: Path,
    mlflow_server: MlflowServer,
) -> None:
    _, model_name = someone_elses_experiment_and_model(mlflow_server)
    dataset_id = dataset_server.service.add_csv(sklearn_csv(data_dir, "wine"), "wine")
    job_id = await bus.submit(dataset_id, "target", model_name=model_name)
    events = await bus.wait_final(job_id)
    final = final_event(events)
    assert final.WhichOneof("kind") == "failed", final
    assert reason_of(final) == "MLFLOW_PERMISSION_DENIED"
    assert model_name in final.failed.error.message
    assert {event.attempt for event in events} == {1}  # not retried
    status, model = call(
        mlflow_server, admin(mlflow_server), "GET",
        f"/api/2.0/mlflow/registered-models/get?name={model_name}",
    )  # fmt: skip
    assert status == 200
    assert "latest_versions" not in model["registered_model"]
    assert "tags" not in model["registered_model"]

    # Serving treats it as what it is to modelyard: no such model.
    async with grpc.aio.insecure_channel(trainer.address) as channel:
        stub = trainer_service_pb2_grpc.TrainerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetModel(
                trainer_service_pb2.GetModelRequest(model_name=model_name), metadata=METADATA
            )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(refused.value) == "MODEL_NOT_FOUND"
