"""The `modelyard_client` library against the live gateway: pagination, the
Server-Sent Events of a watch, the request fields it sends, its errors."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from modelyard_client import Client, ModelyardError
from modelyard_client.api import server_sent_events

pytestmark = pytest.mark.slow


def test_lists_page_through_with_the_next_page_token(client: Client, tmp_path: Path) -> None:
    uploaded = []
    for index in range(3):
        path = tmp_path / f"paged-{index}.csv"
        path.write_text("x,y\n1,a\n2,b\n3,a\n")
        uploaded.append(client.upload_dataset(path, f"paged-{index}")["datasetId"])

    one_per_page = list(client.list_datasets("paged-", page_size=1))
    first_two = list(itertools.islice(client.list_datasets("paged-", page_size=1), 2))
    all_jobs = [j["jobId"] for j in client.list_training_jobs(page_size=1000)]
    paged_jobs = [j["jobId"] for j in client.list_training_jobs(page_size=1)]

    assert [d["datasetId"] for d in one_per_page] == uploaded[::-1]  # newest first, no repeats
    assert [d["datasetId"] for d in first_two] == uploaded[:0:-1]
    assert paged_jobs == all_jobs


def test_watch_yields_each_update_of_a_job_until_it_is_final(
    client: Client, slow_dataset: dict[str, Any]
) -> None:
    job = client.create_training_job(
        slow_dataset["datasetId"],
        "y",
        params={"num_iterations": 1500, "learning_rate": 0.01, "early_stopping_round": 0},
    )

    updates = list(client.watch_training_job(job["jobId"]))

    states = [u["state"] for u in updates]
    assert {u["jobId"] for u in updates} == {job["jobId"]}
    assert states[-1] == "SUCCEEDED"
    assert "RUNNING" in states
    assert states.index("RUNNING") < states.index("SUCCEEDED")
    seen = [u["progress"]["iteration"] for u in updates if u.get("progress")]
    assert seen == sorted(seen)
    assert seen
    assert seen[-1] <= 1500
    assert updates[-1]["metrics"]["roc_auc"] > 0.5
    assert updates[-1]["params"] == {
        "num_iterations": "1500",  # the client sends the map's values as strings
        "learning_rate": "0.01",
        "early_stopping_round": "0",
    }


def test_the_event_stream_parser_reads_the_gateway_stream(
    stack: Stack, churn_model: dict[str, Any]
) -> None:
    headers = {"Authorization": f"Bearer {stack.api_token}"}
    url = f"{stack.gateway_url}/v1/trainingJobs/{churn_model['jobId']}:watch"
    with httpx.stream("GET", url, headers=headers, timeout=30) as response:
        events = list(server_sent_events(response.iter_lines()))

    assert response.headers["content-type"].startswith("text/event-stream")
    assert len(events) == 1  # a final job: itself, then the stream ends
    kind, data = events[0]
    assert kind == "job"
    assert data.startswith('{"trainingJob":{"jobId":"' + churn_model["jobId"])


def test_the_event_stream_parser_follows_the_html_rules() -> None:
    lines = [
        ": keep-alive",
        "",
        "id: 1",
        "event: job",
        'data: {"a":',
        "data:1}",
        "",
        "data: plain",
        "",
        "event: error",
        "",  # no data: nothing dispatched, and the type is forgotten
        "data: x",
        "",
        "event: job",
        "data: cut short",  # no blank line at the end: never dispatched
    ]

    assert list(server_sent_events(lines)) == [
        ("job", '{"a":\n1}'),
        ("message", "plain"),
        ("message", "x"),
    ]


def test_requests_carry_the_fields_the_gateway_expects(
    client: Client, churn_dataset: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "semicolons.csv"
    path.write_text("1;a\n2;b\n")

    dataset = client.upload_dataset(path, "no header", delimiter=";", has_header=False)
    job = client.create_training_job(
        churn_dataset["datasetId"],
        "churned",
        task="BINARY",
        registered_model_name="cli-fields",
        request_id="client-fields-1",
        max_run_duration_seconds=90.5,
    )
    same = client.create_training_job(
        churn_dataset["datasetId"], "churned", request_id="client-fields-1"
    )
    cancelled = client.cancel_training_job(job["jobId"])

    assert dataset["csvOptions"] == {"delimiter": ";", "hasHeader": False}
    assert [c["name"] for c in dataset["columns"]] == ["column_1", "column_2"]
    assert dataset["rowCount"] == "2"
    assert job["maxRunDuration"] == "90.500s"
    assert job["registeredModelName"] == "cli-fields"
    assert job["task"] == "BINARY"
    assert same["jobId"] == job["jobId"]
    assert cancelled["state"] in {"CANCELLED", "CANCELLING"}


def test_errors_carry_status_reason_and_request_id(stack: Stack, client: Client) -> None:
    with pytest.raises(ModelyardError) as missing:
        client.get_dataset("no-such-dataset")
    with pytest.raises(ModelyardError) as unwatched:
        next(client.watch_training_job("no-such-job"))
    with Client(stack.gateway_url, "wrong") as intruder, pytest.raises(ModelyardError) as refused:
        list(intruder.list_models())

    assert (missing.value.http_status, missing.value.status, missing.value.reason) == (
        404,
        "NOT_FOUND",
        "DATASET_NOT_FOUND",
    )
    assert str(missing.value) == "NOT_FOUND DATASET_NOT_FOUND: no dataset 'no-such-dataset'"
    assert missing.value.request_id
    assert (unwatched.value.http_status, unwatched.value.reason) == (404, "JOB_NOT_FOUND")
    assert (refused.value.http_status, refused.value.reason) == (401, "API_TOKEN_INVALID")


@pytest.mark.fault
def test_a_watch_resumes_when_the_gateway_restarts_midway(
    stack: Stack, client: Client, slow_dataset: dict[str, Any]
) -> None:
    job = client.create_training_job(
        slow_dataset["datasetId"],
        "y",
        params={"num_iterations": 4000, "learning_rate": 0.001, "early_stopping_round": 0},
    )
    updates = client.watch_training_job(job["jobId"])
    before = next(u for u in updates if u.get("progress"))  # training, and watched

    stack.processes["gateway"].kill()  # a crash: a graceful stop would drain the stream first
    restarted_at = len(stack.logs("gateway"))
    stack.start_gateway()  # same port
    after = list(updates)

    resumed = f"GET /v1/trainingJobs/{job['jobId']}:watch"  # logged by the new gateway
    deadline = time.monotonic() + 10  # once the stream has ended
    while resumed not in stack.logs("gateway")[restarted_at:]:
        assert time.monotonic() < deadline, "the watch never went through the new gateway"
        time.sleep(0.2)
    assert before["state"] == "RUNNING"
    assert after[-1]["state"] == "SUCCEEDED"
    assert after[-1]["jobId"] == job["jobId"]
    assert after[-1]["summary"]["bestIteration"] == 4000
