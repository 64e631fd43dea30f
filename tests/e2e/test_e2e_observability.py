"""What operators see: one trace from the gateway through Jobs and NATS to the
Trainer and its MLflow calls, and a Prometheus endpoint on every process."""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.otlp import OtlpReceiver
from devstack.stack import Stack
from tests.suite_support import wait_final

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SAMPLE = Path(__file__).resolve().parents[2] / "devstack" / "samples" / "iris.csv"
SERVER, CONSUMER = 2, 5  # OTLP span kinds


def test_one_trace_spans_gateway_jobs_nats_and_trainer(
    stack: Stack, api: httpx.Client, upload: Any, otlp_receiver: OtlpReceiver
) -> None:
    dataset = upload(SAMPLE)
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"

    created = api.post(
        "/v1/trainingJobs",
        json={"datasetId": dataset["datasetId"], "targetColumn": "species"},
        headers={"traceparent": traceparent},
    )
    assert created.status_code == 200, created.text
    assert wait_final(api, f"/v1/trainingJobs/{created.json()['jobId']}")["state"] == "SUCCEEDED"

    def spans_by_service() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for span in otlp_receiver.trace(trace_id):
            found.setdefault(span.service, set()).add(span.name)
        return found

    # The job is final once Jobs applies the Trainer's last event, but the Trainer's
    # "train job" span ends only after it acks, and exporters flush every half second.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = spans_by_service()
        trainer_spans = found.get("modelyard-trainer", set())
        applied = any(name.startswith("apply ") for name in found.get("modelyard-jobs", set()))
        if "modelyard-gateway" in found and applied and "train job" in trainer_spans:
            break
        time.sleep(0.5)
    found = spans_by_service()
    assert "POST /modelyard.jobs.v1.JobsService/CreateTrainingJob" in found["modelyard-gateway"]
    jobs = found["modelyard-jobs"]
    assert "/modelyard.jobs.v1.JobsService/CreateTrainingJob" in jobs
    assert "publish training_request" in jobs  # the relay, across the outbox
    assert "train job" in found["modelyard-trainer"]  # the Trainer, across NATS
    assert "train lightgbm" in found["modelyard-trainer"]
    assert any(name.startswith("mlflow ") for name in found["modelyard-trainer"])
    assert any(name.startswith("apply ") for name in jobs)  # events back, across NATS
    consumer = [s for s in otlp_receiver.trace(trace_id) if s.name == "train job"]
    assert consumer[0].kind == CONSUMER


def metric_value(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}(\{{[^}}]*{re.escape(labels)}[^}}]*\}})? ([0-9.e+-]+)$"
    values = [float(m.group(2)) for m in re.finditer(pattern, text, re.MULTILINE)]
    assert values, f"{name} {labels} not exported"
    return sum(values)


def test_every_process_exports_prometheus_metrics(
    stack: Stack, api: httpx.Client, upload: Any
) -> None:
    dataset = upload(SAMPLE)
    job_id = api.post(
        "/v1/trainingJobs", json={"datasetId": dataset["datasetId"], "targetColumn": "species"}
    ).json()["jobId"]
    assert wait_final(api, f"/v1/trainingJobs/{job_id}")["state"] == "SUCCEEDED"
    time.sleep(2)  # Jobs samples its gauges every second in this stack

    def scrape(address: str) -> str:
        response = httpx.get(f"http://{address}/metrics", timeout=10)
        assert response.status_code == 200
        return response.text

    dataset_metrics = scrape(stack.metrics_addresses["dataset"])
    assert metric_value(dataset_metrics, "modelyard_dataset_ingested_bytes_total") > 0
    assert metric_value(dataset_metrics, "modelyard_grpc_server_calls_total", "UploadDataset") > 0

    jobs_metrics = scrape(stack.metrics_addresses["jobs"])
    assert metric_value(jobs_metrics, "modelyard_jobs", 'state="SUCCEEDED"') >= 1
    assert metric_value(jobs_metrics, "modelyard_training_queue_pending") >= 0
    assert metric_value(jobs_metrics, "modelyard_job_events_lag") >= 0
    calls = metric_value(jobs_metrics, "modelyard_grpc_server_call_seconds_count", "GetTraining")
    assert calls > 0

    trainer_metrics = scrape(stack.metrics_addresses["trainer"])
    assert metric_value(trainer_metrics, "modelyard_trainer_training_seconds_count") >= 1
    assert (
        metric_value(trainer_metrics, "modelyard_trainer_attempts_total", 'disposition="ack"') >= 1
    )

    gateway = scrape(stack.metrics_addresses["gateway"])  # its own port, like every process
    assert metric_value(gateway, "modelyard_gateway_requests_total", 'status="200"') > 0
    # The API port serves no metrics: publishing the API does not publish them.
    assert httpx.get(f"{stack.gateway_url}/metrics", timeout=10).status_code in (401, 404)
