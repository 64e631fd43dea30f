"""The whole platform as real processes, shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.components import postgres_available
from devstack.otlp import OtlpReceiver
from devstack.stack import Stack, StackOptions
from tests.suite_support import post_dataset


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, otlp_receiver: OtlpReceiver) -> Iterator[Stack]:
    """nats-server, MLflow with basic auth, moto S3 for blobs, PostgreSQL when it
    answers, the three services and the gateway with bearer-token auth; every
    process exports its spans to `otlp_receiver`."""
    options = StackOptions(
        work_dir=tmp_path_factory.mktemp("e2e-stack"),
        database="postgresql" if postgres_available() else "sqlite",
        blob_store="s3",
        otlp_endpoint=otlp_receiver.endpoint,
        extra_env={
            "jobs": {"MODELYARD_JOBS_METRICS_SAMPLE_SECONDS": "1"},
            # Several small jobs at once (test_e2e_read_your_writes trains thirty).
            "trainer": {"MODELYARD_TRAINER_WORKER_SLOTS": "4"},
        },
    )
    with Stack(options) as running:
        yield running


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {stack.api_token}"}
    with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=60) as client:
        yield client


Uploader = Callable[[Path], dict[str, Any]]


@pytest.fixture
def upload(api: httpx.Client) -> Uploader:
    """Upload a CSV through the gateway, streamed, and return the READY dataset."""

    def upload_csv(path: Path) -> dict[str, Any]:
        with path.open("rb") as body:
            dataset = post_dataset(api, body, displayName=path.stem)
        assert dataset["state"] == "READY"
        return dataset

    return upload_csv
