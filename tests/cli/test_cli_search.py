"""A search through the whole stack, as a user drives it: `modelyard train --estimate`
(the quote), `train --max-trials --wait` (trial N and the best so far on the bar),
`jobs trials` (the leaderboard's rows, from Jobs), `jobs replay --wait` (the same
model file again), and the clear errors of a bad search."""

from __future__ import annotations

import re
from typing import Any

import pytest

from modelyard_client import Client
from tests.cli.cli_support import Cli

pytestmark = pytest.mark.slow


def test_quote_search_trials_and_replay(
    cli: Cli, client: Client, churn_dataset: dict[str, Any]
) -> None:
    dataset = churn_dataset["datasetId"]
    quote = cli(
        "train",
        dataset,
        "--target",
        "churned",
        "--max-trials",
        "4",
        "--estimate",
        "--output",
        "json",
    )
    assert quote.code == 0, quote
    assert quote.json()["trials"] == 4
    assert quote.json()["fitsMemoryLimit"] is True
    assert float(quote.json()["wallTime"].rstrip("s")) > 0

    run = cli.terminal(
        "train",
        dataset,
        "--target",
        "churned",
        "--max-trials",
        "4",
        "--param",
        "seed=5",
        "--wait",
        timeout=300,
    )
    assert run.code == 0, run
    job_id = re.search(r"job ([0-9a-f]{32}) QUEUED", run.text)
    assert job_id, run
    job = client.get_training_job(job_id.group(1))
    assert job["state"] == "SUCCEEDED"
    assert job["search"] == {"maxTrials": 4}
    outcome = job["summary"]["search"]
    assert outcome["trials"] == 4
    assert outcome["validation"] == "cv"
    assert len(job["summary"]["modelSha256"]) == 64
    assert re.search(r"trial \d/4 \(\d done\), best roc_auc \d\.\d+", run.text), run
    # 300 rows: the 5 folds are drawn 3 times (repeated K-fold below 500 rows)
    assert (outcome["folds"], outcome["foldRepeats"]) == (5, 3)
    searched = r"searched\s+4 trials \(5-fold cross-validation, drawn 3 times\), best #\d"
    assert re.search(searched, run.text), run

    trials = cli("jobs", "trials", job["jobId"], "--output", "json")
    assert trials.code == 0, trials
    assert [t["number"] for t in trials.json()] == [0, 1, 2, 3]
    assert all(t["mlflowRunId"] for t in trials.json())
    table = cli("jobs", "trials", job["jobId"])
    assert "best so far" in table.stdout
    assert [t["number"] for t in client.list_trials(job["jobId"], page_size=3)] == [0, 1, 2, 3]

    replay = cli.terminal("jobs", "replay", job["jobId"], "--wait", timeout=300)
    assert replay.code == 0, replay
    assert re.search(r"replay of\s+" + job["jobId"] + r" — model sha256 matches", replay.text), (
        replay
    )
    replayed = [
        j
        for j in client.list_training_jobs()
        if (j.get("replay") or {}).get("sourceJobId") == job["jobId"]
    ]
    assert replayed[0]["summary"]["modelSha256"] == job["summary"]["modelSha256"]


def test_a_bad_search_is_refused_with_its_reason(cli: Cli, churn_dataset: dict[str, Any]) -> None:
    dataset = churn_dataset["datasetId"]
    short = cli("train", dataset, "--target", "churned", "--budget", "0.2")
    assert short.code != 0
    assert "SEARCH_BUDGET_TOO_SHORT" in short.stderr
    many = cli("train", dataset, "--target", "churned", "--max-trials", "100000")
    assert "SEARCH_MAX_TRIALS_INVALID" in many.stderr
    gone = cli("jobs", "replay", "0" * 32)
    assert "JOB_NOT_FOUND" in gone.stderr
