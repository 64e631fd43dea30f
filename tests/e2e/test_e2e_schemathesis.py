"""Schemathesis against a live stack: every route of `/openapi.json`, with
generated requests, through the real gateway to the real services.

Its own stack (PostgreSQL when it answers, S3 blobs, as the e2e stack), seeded
with a dataset, a trained model and a finished job, so that fuzzing reaches the
services' logic and not only their 404s: schemathesis draws path ids, the
dataset of a new job and its target column half of the time from those real
values. Checks: no 5xx, and responses that conform to the document (status
code, content type, body schema). Fixed seed, bounded examples (MAX_EXAMPLES a route,
JOB_CREATING_MAX_EXAMPLES for the routes that queue a job).

Every route is fuzzed. Two adjustments, not exclusions:
- DELETE /v1/datasets/{dataset_id} runs on its own, after every other route, with
  a throwaway dataset of its own, so that the seeded one stays for the other routes.
  (In one run, schemathesis draws path ids from every id a response has shown it,
  whatever the configured dictionaries say: its DELETE would delete the seeded
  dataset before the other routes had read it.)
- `:watch` is an endless stream while a job runs: schemathesis reads at most a
  few events of it (`max-stream-events`) and checks those.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.components import postgres_available
from devstack.stack import Stack, StackOptions
from tests.suite_support import post_dataset, wait_final

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SEED = 20261126
# Raise it for a deeper run on a developer's machine; the suite keeps it quick.
# Every route is run whatever the number (the test counts them); 20 examples each
# keep the seeded ids reaching the services (checked below) at half the time of 50.
MAX_EXAMPLES = int(os.environ.get("MODELYARD_SCHEMATHESIS_MAX_EXAMPLES", "20"))
# Each accepted example of these queues a training or scoring job: at MAX_EXAMPLES
# they queued ~46 jobs a run (44 Trainer attempts), and the `:watch` examples then
# waited behind them. Five generated examples each still reach the services (the
# coverage phase, which is not capped, adds its own); checked below.
JOB_CREATING = (
    "POST /v1/trainingJobs",
    "POST /v1/trainingJobs/{job_id}:replay",
    "POST /v1/scoringJobs",
    "POST /models/train",
)
JOB_CREATING_MAX_EXAMPLES = min(5, MAX_EXAMPLES)
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
]
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CSV = (
    "age,income,plan,joined,churned\n"
    + "".join(
        f"{20 + i % 50},{1000 + 37 * i % 900}.5,{('basic', 'plus', 'pro')[i % 3]},"
        f"2024-0{1 + i % 9}-1{i % 10},{'yes' if (i * 7) % 10 < 4 else 'no'}\n"
        for i in range(120)
    )
    + "33,,plus,,no\n"
)


@pytest.fixture(scope="module")
def fuzzed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    options = StackOptions(
        work_dir=tmp_path_factory.mktemp("schemathesis-stack"),
        database="postgresql" if postgres_available() else "sqlite",
        blob_store="s3",
    )
    with Stack(options) as running:
        yield running


@pytest.fixture(scope="module")
def seeds(fuzzed_stack: Stack) -> dict[str, Any]:
    """A READY dataset, a throwaway one, a SUCCEEDED job and its registered model."""
    headers = {"Authorization": f"Bearer {fuzzed_stack.api_token}"}
    with httpx.Client(base_url=fuzzed_stack.gateway_url, headers=headers, timeout=60) as api:
        dataset = post_dataset(api, CSV.encode(), displayName="fuzz-kept")
        throwaway = post_dataset(api, CSV.encode(), displayName="fuzz-throwaway")
        created = api.post(
            "/v1/trainingJobs",
            json={
                "datasetId": dataset["datasetId"],
                "targetColumn": "churned",
                "registeredModelName": "fuzz-model",
            },
        )
        assert created.status_code == 200, created.text
        job = wait_final(api, f"/v1/trainingJobs/{created.json()['jobId']}", timeout=180)
        assert job["state"] == "SUCCEEDED", job
    return {
        "dataset_id": dataset["datasetId"],
        "throwaway_id": throwaway["datasetId"],
        "columns": [c["name"] for c in dataset["columns"]],
        "job_id": job["jobId"],
        "model_name": "fuzz-model",
    }


DELETE_DATASET = "DELETE /v1/datasets/{dataset_id}"


def config(seeds: dict[str, Any], dataset_id: str) -> str:
    """schemathesis.toml: the seeded values as dictionaries, drawn half of the time."""

    def values(items: list[str]) -> str:
        return json.dumps(items)

    def drawn(dictionary: str) -> str:
        return f'{{ dictionary = "{dictionary}", probability = 0.5 }}'

    capped = "".join(
        f"""
[[operations]]
include-name = "{name}"
generation.max-examples = {JOB_CREATING_MAX_EXAMPLES}
"""
        for name in JOB_CREATING
    )
    return f"""
request-timeout = 30
max-stream-events = 3
generation.max-examples = {MAX_EXAMPLES}

[dictionaries.datasets]
values = {values([dataset_id])}
[dictionaries.jobs]
values = {values([seeds["job_id"]])}
[dictionaries.models]
values = {values([seeds["model_name"]])}
[dictionaries.columns]
values = {values(seeds["columns"])}
[dictionaries.aliases]
values = ["champion"]

[parameters]
"path.dataset_id" = {drawn("datasets")}
"path.job_id" = {drawn("jobs")}
"path.model_name" = {drawn("models")}
"query.datasetId" = {drawn("datasets")}
"body.datasetId" = {drawn("datasets")}
"body.targetColumn" = {drawn("columns")}
"body.alias" = {drawn("aliases")}
{capped}"""


def schemathesis(stack: Stack, config_text: str, directory: Path, *selection: str) -> str:
    """One schemathesis run of the selected operations; its report, after checking it
    passed."""
    directory.mkdir()
    config_file = directory / "schemathesis.toml"
    config_file.write_text(config_text)
    done = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(config_file),
            "run",
            f"{stack.gateway_url}/openapi.json",
            *selection,
            "--header",
            f"Authorization: Bearer {stack.api_token}",
            "--checks",
            ",".join(CHECKS),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--no-color",
            # A failing page token must show as sent, not as [Filtered]; the bearer
            # token shown with it is this throwaway stack's.
            "--output-sanitize",
            "false",
        ],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = done.stdout + done.stderr
    failures = report[report.find("FAILURES") :] if "FAILURES" in report else report[-6000:]
    assert done.returncode == 0, failures
    return report


def test_schemathesis_finds_no_server_error_nor_nonconforming_response(
    fuzzed_stack: Stack, seeds: dict[str, Any], tmp_path: Path
) -> None:
    others = schemathesis(
        fuzzed_stack,
        config(seeds, seeds["dataset_id"]),
        tmp_path / "others",
        "--exclude-name",
        DELETE_DATASET,
    )
    deletes = schemathesis(
        fuzzed_stack,
        config(seeds, seeds["throwaway_id"]),
        tmp_path / "delete",
        "--include-name",
        DELETE_DATASET,
    )

    # Every operation of the document, none left out.
    document = httpx.get(f"{fuzzed_stack.gateway_url}/openapi.json", timeout=30).json()
    operations = sum(len(item) for item in document["paths"].values())
    assert f"Tested: {operations - 1}" in others, others[-3000:]
    assert "Tested: 1" in deletes, deletes[-3000:]
    # The seeded values reached the services: not a run of 404s.
    reached = fuzzed_stack.logs("gateway")
    for path in (
        f"GET /v1/datasets/{seeds['dataset_id']} 200",
        f"GET /v1/datasets/{seeds['dataset_id']}:download 200",
        f"GET /v1/trainingJobs/{seeds['job_id']}:watch 200",
        f"GET /v1/models/{seeds['model_name']} 200",
        f"DELETE /v1/datasets/{seeds['throwaway_id']} 200",
        "POST /v1/trainingJobs 200",
    ):
        assert f'"message": "{path}"' in reached, f"never answered: {path}"
