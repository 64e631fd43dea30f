"""`modelyard score` against a live stack: a stored dataset scored by name with the
champion of `cli-churn`, followed to its end, the output a dataset the CLI shows."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.cli.cli_support import Cli

pytestmark = pytest.mark.slow


def test_score_waits_for_the_output_dataset(
    cli: Cli, churn_model: dict[str, Any], churn_dataset: dict[str, Any]
) -> None:
    run = cli("score", "churn", "--model", "cli-churn@champion", "--keep", "customer_id", "--wait")
    as_json = cli(
        "score", "churn", "--model", "cli-churn/1", "--probabilities", "--wait", "-O", "json"
    )

    assert run.code == 0, run
    rows = int(churn_dataset["rowCount"])
    assert re.search(rf"rows\s+{rows:,}/{rows:,} rows", run.stdout), run
    assert re.search(r"model\s+cli-churn version 1 \(alias champion\)", run.stdout), run
    found = re.search(r"output\s+dataset (\w+) \(300 rows;", run.stdout)
    assert found, run
    shown = cli("datasets", "show", found.group(1), "-O", "json")
    assert [c["name"] for c in shown.json()["columns"]] == ["customer_id", "prediction", "flags"]

    assert as_json.code == 0, as_json
    job = as_json.json()
    assert job["state"] == "SUCCEEDED"
    assert job["modelVersion"] == "1"
    assert job["output"]["rowsScored"] == str(rows)
    output = cli("datasets", "show", job["output"]["datasetId"], "-O", "json").json()
    assert [c["name"] for c in output["columns"]] == [
        "prediction",
        "probability_no",
        "probability_yes",
        "flags",
    ]


def test_score_with_an_unknown_model_says_why(cli: Cli, churn_dataset: dict[str, Any]) -> None:
    run = cli("score", "churn", "--model", "no-such-model", "--wait")

    assert run.code == 3, run
    assert run.stderr == "error: NOT_FOUND MODEL_NOT_FOUND: no registered model 'no-such-model'\n"
