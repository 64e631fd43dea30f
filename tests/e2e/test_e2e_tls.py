"""The whole path with mutual TLS between every gRPC server and client, and
what a client without a valid certificate gets: refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from devstack.stack import Stack, StackOptions
from devstack.tls import Tls, make_tls
from modelyard.jobs.v1 import jobs_service_pb2, jobs_service_pb2_grpc, training_job_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SAMPLE = Path(__file__).resolve().parents[2] / "devstack" / "samples" / "iris.csv"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory, tls: Tls) -> Iterator[Stack]:
    options = StackOptions(work_dir=tmp_path_factory.mktemp("tls-stack"), tls=tls)
    with Stack(options) as stack:
        yield stack


@pytest.fixture(scope="module")
def trained_job(tls_stack: Stack) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {tls_stack.api_token}"}
    with httpx.Client(base_url=tls_stack.gateway_url, headers=headers, timeout=60) as api:
        dataset = api.post(
            "/v1/datasets",
            params={"displayName": "iris"},
            content=SAMPLE.read_bytes(),
            headers={"Content-Type": "text/csv"},
        ).json()
        job_id = api.post(
            "/v1/trainingJobs",
            json={"datasetId": dataset["datasetId"], "targetColumn": "species"},
        ).json()["jobId"]
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            job: dict[str, Any] = api.get(f"/v1/trainingJobs/{job_id}").json()
            if job["state"] in {"SUCCEEDED", "FAILED", "CANCELLED"}:
                return job
            time.sleep(0.5)
    raise AssertionError("job did not finish")


def get_job(channel: grpc.Channel, token: str, job_id: str) -> training_job_pb2.TrainingJob:
    stub = jobs_service_pb2_grpc.JobsServiceStub(channel)
    request = jobs_service_pb2.GetTrainingJobRequest(job_id=job_id)
    job: training_job_pb2.TrainingJob = stub.GetTrainingJob(
        request, timeout=10, metadata=(("authorization", f"Bearer {token}"),)
    )
    return job


def test_the_whole_path_runs_over_mutual_tls(
    tls_stack: Stack, tls: Tls, trained_job: dict[str, Any]
) -> None:
    assert trained_job["state"] == "SUCCEEDED", trained_job.get("error")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_file.read_bytes(),
        private_key=tls.key_file.read_bytes(),
        certificate_chain=tls.cert_file.read_bytes(),
    )
    with grpc.secure_channel(tls_stack.addresses["jobs"], credentials) as channel:
        job = get_job(channel, tls_stack.service_token, trained_job["jobId"])
    assert job.job_id == trained_job["jobId"]


def refused(channel: grpc.Channel, stack: Stack, job_id: str) -> grpc.StatusCode:
    with channel, pytest.raises(grpc.RpcError) as raised:
        get_job(channel, stack.service_token, job_id)
    code: grpc.StatusCode = raised.value.code()
    return code


def test_a_client_without_a_certificate_is_refused(
    tls_stack: Stack, tls: Tls, trained_job: dict[str, Any]
) -> None:
    # It trusts the server, but has no certificate of its own to show.
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca_file.read_bytes())
    channel = grpc.secure_channel(tls_stack.addresses["jobs"], credentials)
    assert refused(channel, tls_stack, trained_job["jobId"]) == grpc.StatusCode.UNAVAILABLE


def test_a_client_with_a_certificate_of_another_ca_is_refused(
    tls_stack: Stack, tls: Tls, trained_job: dict[str, Any], tmp_path: Path
) -> None:
    rogue = make_tls(tmp_path / "rogue", ca_name="someone else's CA")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_file.read_bytes(),
        private_key=rogue.key_file.read_bytes(),
        certificate_chain=rogue.cert_file.read_bytes(),
    )
    channel = grpc.secure_channel(tls_stack.addresses["jobs"], credentials)
    assert refused(channel, tls_stack, trained_job["jobId"]) == grpc.StatusCode.UNAVAILABLE


def test_a_plaintext_client_is_refused(tls_stack: Stack, trained_job: dict[str, Any]) -> None:
    channel = grpc.insecure_channel(tls_stack.addresses["jobs"])
    assert refused(channel, tls_stack, trained_job["jobId"]) == grpc.StatusCode.UNAVAILABLE
