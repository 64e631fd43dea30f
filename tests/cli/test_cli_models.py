"""`modelyard models …` and `modelyard predict` against a live stack."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import pytest

from tests.cli.cli_support import Cli

pytestmark = pytest.mark.slow


def test_models_list_shows_the_champion_and_its_score(
    cli: Cli, churn_model: dict[str, Any]
) -> None:
    table = cli("models", "list")
    listed = cli("models", "list", "-O", "json")

    assert table.code == 0, table
    roc_auc = churn_model["metrics"]["roc_auc"]
    assert re.search(rf"^cli-churn\s+1\s+1\s+roc_auc {roc_auc:.4f}\s+\d{{4}}-", table.stdout, re.M)
    model = next(m for m in listed.json() if m["name"] == "cli-churn")
    assert model["championVersion"] == "1"  # int64 as a string
    assert model["versions"][0]["jobId"] == churn_model["jobId"]


def test_models_show_lists_versions_with_aliases_and_scores(
    cli: Cli, churn_model: dict[str, Any]
) -> None:
    run = cli("models", "show", "cli-churn")
    as_json = cli("models", "show", "cli-churn", "--output", "json")
    missing = cli("models", "show", "no-such-model")

    assert run.code == 0, run
    assert re.search(r"predicts\s+churned \(BINARY\)", run.stdout)
    assert re.search(r"champion\s+version 1", run.stdout)
    assert "modelyard predict cli-churn@champion FILE.csv" in run.stdout
    metrics = churn_model["metrics"]
    assert re.search(
        rf"^1\s+champion\s+roc_auc {metrics['roc_auc']:.4f}\s+{churn_model['jobId']}\s+\d{{4}}-",
        run.stdout,
        re.MULTILINE,
    ), run
    assert as_json.json()["versions"][0]["aliases"] == ["champion"]
    assert missing.code == 3
    assert (
        missing.stderr == "error: NOT_FOUND MODEL_NOT_FOUND: no registered model 'no-such-model'\n"
    )


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_predict_with_the_champion_writes_a_scored_csv(
    cli: Cli, churn_model: dict[str, Any], csv_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scored.csv"

    run = cli("predict", "cli-churn@champion", str(csv_dir / "churn_new.csv"), "-o", str(out))

    assert run.code == 0, run
    assert run.stderr == f"scored 25 rows with cli-churn version 1 → {out}\n"
    source = read_csv((csv_dir / "churn_new.csv").read_text())
    scored = read_csv(out.read_text())
    assert len(scored) == 25
    assert list(scored[0]) == [*source[0], "prediction", "probability_no", "probability_yes"]
    for original, row in zip(source, scored, strict=True):
        assert {k: row[k] for k in original} == original  # the input, untouched
        assert row["prediction"] in {"yes", "no"}
        p_no, p_yes = float(row["probability_no"]), float(row["probability_yes"])
        assert p_no + p_yes == pytest.approx(1.0)
        assert row["prediction"] == ("yes" if p_yes > p_no else "no")


def test_predict_with_a_version_number_to_stdout_and_as_json(
    cli: Cli, churn_model: dict[str, Any], csv_dir: Path
) -> None:
    champion = cli("predict", "cli-churn", str(csv_dir / "churn_new.csv"))
    version = cli("predict", "cli-churn:1", str(csv_dir / "churn_new.csv"))
    as_json = cli("-O", "json", "predict", "cli-churn:1", str(csv_dir / "churn_new.csv"))

    assert version.code == 0, version
    assert read_csv(version.stdout) == read_csv(champion.stdout)  # version 1 is the champion
    rows = as_json.json()
    assert len(rows) == 25
    assert rows[0]["customer_id"] == "1000"
    assert rows[0]["prediction"] == read_csv(version.stdout)[0]["prediction"]
    assert isinstance(rows[0]["probability_yes"], float)


def test_predict_refuses_unknown_versions_and_malformed_references(
    cli: Cli, churn_model: dict[str, Any], csv_dir: Path
) -> None:
    rows = str(csv_dir / "churn_new.csv")

    unknown_version = cli("predict", "cli-churn:7", rows)
    unknown_alias = cli("predict", "cli-churn@staging", rows)
    malformed = cli("predict", "cli-churn:latest", rows)

    assert unknown_version.code == 3
    assert unknown_version.stderr.startswith("error: NOT_FOUND MODEL_VERSION_NOT_FOUND: ")
    assert unknown_alias.code == 3
    assert malformed.code == 2
    assert "expected NAME:VERSION with a version number" in malformed.stderr
