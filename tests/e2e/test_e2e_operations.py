"""What engineers operating the platform rely on: grpcurl through reflection, and
MLflow credentials that exist in the Trainer and nowhere else."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.processes import venv_bin
from devstack.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SAMPLE = Path(__file__).resolve().parents[2] / "devstack" / "samples" / "iris.csv"


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_bin("grpcurl"), "-plaintext", "-max-time", "20", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def finished_job(stack: Stack) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {stack.api_token}"}
    with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=60) as api:
        with SAMPLE.open("rb") as body:
            dataset = api.post(
                "/v1/datasets",
                params={"displayName": "iris-ops"},
                content=body,
                headers={"Content-Type": "text/csv"},
            ).json()
        job_id = api.post(
            "/v1/trainingJobs",
            json={"datasetId": dataset["datasetId"], "targetColumn": "species"},
        ).json()["jobId"]
        for _ in range(480):
            job: dict[str, Any] = api.get(f"/v1/trainingJobs/{job_id}").json()
            if job["state"] in {"SUCCEEDED", "FAILED", "CANCELLED"}:
                return job
            time.sleep(0.5)
    raise AssertionError("job did not finish")


@pytest.mark.parametrize(
    ("service", "full_name"),
    [
        ("dataset", "modelyard.dataset.v1.DatasetService"),
        ("jobs", "modelyard.jobs.v1.JobsService"),
        ("trainer", "modelyard.training.v1.TrainerService"),
    ],
)
def test_grpcurl_lists_each_service_through_reflection(
    stack: Stack, service: str, full_name: str
) -> None:
    result = grpcurl(stack.addresses[service], "list")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split()
    assert full_name in listed
    assert "grpc.health.v1.Health" in listed


def test_grpcurl_calls_get_training_job(stack: Stack, finished_job: dict[str, Any]) -> None:
    request = json.dumps({"job_id": finished_job["jobId"]})
    method = "modelyard.jobs.v1.JobsService/GetTrainingJob"
    address = stack.addresses["jobs"]

    refused = grpcurl("-d", request, address, method)
    assert refused.returncode != 0
    assert "Unauthenticated" in refused.stderr
    assert "SERVICE_TOKEN_INVALID" in refused.stderr

    bearer = f"authorization: Bearer {stack.service_token}"
    answered = grpcurl("-H", bearer, "-d", request, address, method)
    assert answered.returncode == 0, answered.stderr
    job = json.loads(answered.stdout)
    assert job["job_id"] == finished_job["jobId"]
    assert job["state"] == "SUCCEEDED"


def process_environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode(errors="replace").partition("=") for item in raw if item)
    return {key: value for key, _, value in pairs}


@pytest.mark.parametrize("name", ["dataset", "jobs", "gateway"])
def test_only_the_trainer_has_mlflow_settings(stack: Stack, name: str) -> None:
    environment = process_environment(stack.processes[name].pid)
    assert [key for key in environment if "MLFLOW" in key.upper()] == []
    assert stack.processes[name].running()  # it runs fine without any


def test_settings_of_other_services_have_no_mlflow_field() -> None:
    from gateway.settings import GatewaySettings
    from services.dataset.settings import DatasetSettings
    from services.jobs.settings import JobsSettings

    for settings in (DatasetSettings, JobsSettings, GatewaySettings):
        assert [f for f in settings.model_fields if "mlflow" in f.lower()] == []


def test_mlflow_password_never_logged_nor_in_job_records(
    stack: Stack, finished_job: dict[str, Any]
) -> None:
    assert stack.mlflow is not None
    assert finished_job["state"] == "SUCCEEDED"
    for password in (stack.mlflow.trainer_password, stack.mlflow.password):
        assert password not in json.dumps(finished_job)
        for log in sorted((stack.work_dir / "logs").glob("*.log")):
            if log.name == "mlflow.log":
                continue  # the MLflow server itself holds the admin password
            assert password not in log.read_text(errors="replace"), log.name
    # The Trainer logs in as its own user; the admin password is setup's alone.
    trainer_environment = process_environment(stack.processes["trainer"].pid)
    assert trainer_environment["MODELYARD_TRAINER_MLFLOW_USERNAME"] == "modelyard-trainer"
    assert trainer_environment["MODELYARD_TRAINER_MLFLOW_PASSWORD"] == (
        stack.mlflow.trainer_password
    )
    assert stack.mlflow.password not in "\n".join(trainer_environment.values())
