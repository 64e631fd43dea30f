"""`modelyard train` and `modelyard jobs …` against a live stack: the live bar of
boosting iterations in a terminal, the metrics table, failures and their exit
codes, watching and cancelling jobs."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from modelyard_client import Client
from tests.cli.cli_support import Cli

pytestmark = pytest.mark.slow

SLOW = ["--param", "learning_rate=0.001", "--param", "early_stopping_round=0"]


def iterations(count: int) -> list[str]:
    return ["--param", f"num_iterations={count}"]


def wait_for_state(client: Client, job_id: str, states: set[str], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_training_job(job_id)
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


def test_train_wait_in_a_terminal_shows_states_a_live_bar_and_the_metrics(
    cli: Cli, client: Client, slow_dataset: dict[str, Any]
) -> None:
    dataset = slow_dataset["datasetId"]
    run = cli.terminal(
        "train", dataset, "--target", "y", "--wait", *SLOW, *iterations(3000), timeout=300
    )

    assert run.code == 0, run
    job_id = re.search(r"job ([0-9a-f]{32}) QUEUED \(waiting for a free trainer\)", run.text)
    assert job_id, run
    job = client.get_training_job(job_id.group(1))
    assert job["state"] == "SUCCEEDED"
    text, metric = run.text, job["progress"]["metricName"]
    # The states, each once, in order.
    said = [m.group(1) for m in re.finditer(rf"job {job['jobId']} ([A-Z]+)", text)]
    assert said[:3] == ["QUEUED", "RUNNING", "SUCCEEDED"], run
    assert "task BINARY (AUTO: 2 distinct string labels → BINARY)" in text
    # A live bar, redrawn in place, of iterations out of 3000 and the validation metric.
    bar = re.compile(rf"training ━+ (\d+)/3000 iterations validation {metric} (\d\.\d+)")
    frames = [(int(m.group(1)), float(m.group(2))) for line in run.lines if (m := bar.search(line))]
    assert len(frames) >= 2, run
    done = [count for count, _ in frames]
    assert done == sorted(done)
    assert 0 < done[0] < 3000  # seen while it was training
    assert re.search(rf"succeeded ━+ 3000/3000 iterations validation {metric} ", text), run
    # Then the job, and its metrics as a table with what each means.
    assert re.search(r"model\s+slow-y version \d+", text), run
    assert "validation metrics" in text
    for name in ("accuracy", "f1", "log_loss", "precision", "recall", "roc_auc"):
        row = re.search(rf"^{name}\s+(\d\.\d{{4}})\s+\S", text, re.MULTILINE)
        assert row, f"no {name} row in\n{text}"
        assert row.group(1) == f"{job['metrics'][name]:.4f}"
    assert re.search(r"roc_auc .* · decides the champion", text)


def test_a_failing_job_in_a_terminal_ends_with_its_reason_and_exit_7(
    cli: Cli, churn_dataset: dict[str, Any]
) -> None:
    run = cli.terminal("train", churn_dataset["datasetId"], "--target", "region", "--wait")

    assert run.code == 7, run
    assert re.search(r"job [0-9a-f]{32} FAILED \(took [0-9.]+ s\)", run.text), run
    assert re.search(r"error\s+FAILED_PRECONDITION TARGET_CONSTANT: ", run.text), run
    assert re.search(
        r"^error: job [0-9a-f]{32} FAILED: FAILED_PRECONDITION TARGET_CONSTANT: the target has "
        r"a single value",
        run.text,
        re.MULTILINE,
    ), run
    assert "iterations" not in run.text  # it never trained: no bar


def test_a_failing_job_for_scripts_is_json_on_both_streams(
    cli: Cli, churn_dataset: dict[str, Any]
) -> None:
    run = cli("train", churn_dataset["datasetId"], "--target", "region", "--wait", "-O", "json")

    assert run.code == 7, run
    job = run.json()
    assert job["state"] == "FAILED"
    assert job["error"]["details"][0]["reason"] == "TARGET_CONSTANT"
    assert json.loads(run.stderr) == {
        "error": {
            "status": "FAILED_PRECONDITION",
            "reason": "TARGET_CONSTANT",
            "message": job["error"]["message"],
            "jobId": job["jobId"],
        }
    }


def test_a_wrong_target_column_is_refused_with_one_line_and_exit_4(
    cli: Cli, churn_dataset: dict[str, Any]
) -> None:
    run = cli("train", churn_dataset["datasetId"], "--target", "churn", "--wait")

    assert run.code == 4, run
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1
    assert run.stderr.startswith(
        f"error: INVALID_ARGUMENT TARGET_COLUMN_NOT_FOUND: dataset {churn_dataset['datasetId']} "
        "has no column 'churn'"
    ), run


def test_a_parameter_out_of_the_allow_list_is_refused(
    cli: Cli, churn_dataset: dict[str, Any]
) -> None:
    unknown = cli("train", churn_dataset["datasetId"], "--target", "churned", "--param", "foo=1")
    malformed = cli("train", churn_dataset["datasetId"], "--target", "churned", "--param", "foo")

    assert unknown.code == 4, unknown
    assert unknown.stderr.startswith("error: INVALID_ARGUMENT PARAM_NOT_ALLOWED: ")
    assert malformed.code == 2, malformed
    assert "expected k=v, got 'foo'" in malformed.stderr


def test_train_without_wait_queues_the_job_and_says_how_to_follow_it(
    cli: Cli, client: Client, churn_dataset: dict[str, Any]
) -> None:
    run = cli(
        "train", churn_dataset["datasetId"], "--target", "churned", "--task", "binary",
        "--model-name", "cli-queued", "--max-run-seconds", "120", "--request-id", "cli-queued-1",
    )  # fmt: skip
    again = cli(
        "-O", "json", "train", churn_dataset["datasetId"], "--target", "churned",
        "--task", "binary", "--model-name", "cli-queued", "--request-id", "cli-queued-1",
    )  # fmt: skip

    assert run.code == 0, run
    job_id = re.search(r"job\s+([0-9a-f]{32})", run.stdout)
    assert job_id, run
    assert re.search(r"state\s+QUEUED", run.stdout)
    assert f"follow it with: modelyard jobs watch {job_id.group(1)}" in run.stdout
    assert again.json()["jobId"] == job_id.group(1)  # the same request id, the same job
    job = wait_for_state(client, job_id.group(1), {"SUCCEEDED"}, timeout=120)
    assert job["task"] == "BINARY"
    assert job["maxRunDuration"] == "120s"
    assert job["mlflow"]["registeredModelName"] == "cli-queued"


def test_jobs_watch_list_show_and_cancel(
    cli: Cli, client: Client, slow_dataset: dict[str, Any]
) -> None:
    dataset = slow_dataset["datasetId"]
    running = cli(
        "-O", "json", "train", dataset, "--target", "y", "--param", "num_iterations=10000", *SLOW
    )
    queued = cli("-O", "json", "train", dataset, "--target", "y", "--param", "num_iterations=10")
    assert running.code == 0, running
    assert queued.code == 0, queued
    running_id, queued_id = running.json()["jobId"], queued.json()["jobId"]
    watcher = cli.start("jobs", "watch", running_id)

    # The second job waits behind the first (one trainer slot): cancelled at once.
    cancelled = cli("jobs", "cancel", queued_id, "--output", "json")
    assert cancelled.code == 0, cancelled
    assert cancelled.json()["state"] == "CANCELLED"
    wait_for_state(client, running_id, {"RUNNING"})
    stopped = cli("jobs", "cancel", running_id, "--wait")
    stdout, stderr = watcher.communicate(timeout=60)

    assert stopped.code == 0, stopped
    assert re.search(r"state\s+CANCELLED", stopped.stdout), stopped
    assert f"job {running_id} CANCELLING (the trainer stops at its next boosting" in stopped.stderr
    assert watcher.returncode == 8, stderr
    assert re.search(r"state\s+CANCELLED", stdout)
    assert f"job {running_id} RUNNING" in stderr
    assert f"job {running_id} CANCELLED" in stderr
    assert stderr.rstrip().endswith(f"job {running_id} was cancelled")
    # A cancelled job stays cancelled.
    twice = cli("jobs", "cancel", queued_id)
    assert twice.code == 4
    assert twice.stderr.startswith("error: FAILED_PRECONDITION JOB_ALREADY_FINISHED: ")
    assert cli("jobs", "watch", queued_id).code == 8
    # Listing and showing.
    listed = cli("jobs", "list", "--state", "cancelled", "--dataset", dataset, "-O", "json")
    assert {j["jobId"] for j in listed.json()} == {running_id, queued_id}
    table = cli("jobs", "list", "--dataset", dataset)
    ids = re.findall(r"^([0-9a-f]{32})\s+([A-Z]+)", table.stdout, re.MULTILINE)
    assert ids[:2] == [(queued_id, "CANCELLED"), (running_id, "CANCELLED")]  # newest first
    shown = cli("jobs", "show", running_id, "-O", "json").json()
    assert shown["state"] == "CANCELLED"
    assert 0 < shown["progress"]["iteration"] < 10000
    assert cli("jobs", "list", "--state", "lost").code == 2
    missing = cli("jobs", "show", "0" * 32)
    assert missing.code == 3
    assert missing.stderr.startswith("error: NOT_FOUND JOB_NOT_FOUND: ")


def test_watching_a_finished_job_shows_it_and_exits_with_its_outcome(
    cli: Cli, churn_model: dict[str, Any]
) -> None:
    run = cli("jobs", "watch", churn_model["jobId"])

    assert run.code == 0, run
    assert run.stderr.startswith(f"job {churn_model['jobId']} SUCCEEDED (took ")
    assert re.search(r"model\s+cli-churn version 1, now the champion", run.stdout)
