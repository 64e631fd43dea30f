"""`make demo`: the whole platform end to end on embedded defaults.

Starts nats-server, an MLflow server with basic auth, the three services and the
gateway; uploads the bundled iris CSV through the REST gateway, trains a model of
`species` (three string labels), prints the job and its metrics, and stops
everything it started. Exits non-zero unless the job SUCCEEDED.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx

from devstack.processes import REPO_ROOT
from devstack.stack import Stack, StackOptions

SAMPLE_CSV = Path(__file__).parent / "samples" / "iris.csv"
TARGET_COLUMN = "species"
FINAL_STATES = {"SUCCEEDED", "FAILED", "CANCELLED"}
JOB_TIMEOUT_SECONDS = 300


def say(text: str = "") -> None:
    print(text, flush=True)


def upload(client: httpx.Client, path: Path) -> dict[str, Any]:
    with path.open("rb") as body:
        response = client.post(
            "/v1/datasets",
            params={"displayName": path.stem},
            content=body,
            headers={"Content-Type": "text/csv"},
        )
    response.raise_for_status()
    dataset: dict[str, Any] = response.json()
    return dataset


def wait_for_final_state(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    last_state = ""
    while time.monotonic() < deadline:
        response = client.get(f"/v1/trainingJobs/{job_id}")
        response.raise_for_status()
        job: dict[str, Any] = response.json()
        if job["state"] != last_state:
            last_state = job["state"]
            say(f"   {time.strftime('%H:%M:%S')}  {last_state}")
        if last_state in FINAL_STATES:
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} not finished after {JOB_TIMEOUT_SECONDS}s")


def print_job(job: dict[str, Any]) -> None:
    detection = job.get("taskDetection", {})
    say(f"   job {job['jobId']}: {job['state']} (attempt {job.get('attempt', 0)})")
    if detection:
        say(f"   task: {detection.get('task')} — {detection.get('reason', '')}")
    for name, value in sorted(job.get("metrics", {}).items()):
        say(f"   {name:>10} {value:.4f}")
    mlflow = job.get("mlflow", {})
    if mlflow.get("runUrl"):
        say(f"   MLflow run:  {mlflow['runUrl']}")
    if mlflow.get("registeredModelName"):
        champion = " (champion)" if mlflow.get("promotedToChampion") else ""
        say(
            f"   registered:  {mlflow['registeredModelName']} "
            f"version {mlflow.get('registeredModelVersion')}{champion}"
        )
    if job.get("error"):
        say(f"   error: {job['error']}")


def run_demo() -> int:
    work_dir = REPO_ROOT / ".modelyard" / "demo"
    shutil.rmtree(work_dir, ignore_errors=True)
    say("modelyard demo: starting NATS, MLflow (basic auth), the services and the gateway…")
    started = time.monotonic()
    with Stack(StackOptions(work_dir=work_dir)) as stack:
        assert stack.mlflow is not None
        say(f"   gateway {stack.gateway_url}  ·  MLflow {stack.mlflow.url}")
        say(f"   up in {time.monotonic() - started:.1f}s; logs in {work_dir / 'logs'}")
        say(f"   admin token of the project `default`: {stack.api_token}")
        headers = {"Authorization": f"Bearer {stack.api_token}"}
        with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=60) as client:
            say(f"1. upload {SAMPLE_CSV.relative_to(REPO_ROOT)}")
            dataset = upload(client, SAMPLE_CSV)
            columns = ", ".join(f"{c['name']} {c['dataType']}" for c in dataset["columns"])
            say(f"   dataset {dataset['datasetId']}: {dataset['rowCount']} rows — {columns}")

            say(f"2. train a model of '{TARGET_COLUMN}' (task AUTO)")
            response = client.post(
                "/v1/trainingJobs",
                json={
                    "datasetId": dataset["datasetId"],
                    "targetColumn": TARGET_COLUMN,
                    "task": "AUTO",
                },
            )
            response.raise_for_status()
            job_id = response.json()["jobId"]
            say(f"   job {job_id} queued")

            say("3. wait for the job")
            job = wait_for_final_state(client, job_id)
            print_job(job)
        say("4. stopping what the demo started")
    succeeded = job["state"] == "SUCCEEDED"
    say("demo " + ("succeeded" if succeeded else "FAILED"))
    return 0 if succeeded else 1
