"""`modelyard datasets …` against a live stack: upload with a byte progress bar,
list, the profile table, download, delete, and the errors a user meets."""

from __future__ import annotations

import gzip
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.cli.cli_support import Cli

pytestmark = pytest.mark.slow


def test_upload_shows_a_progress_bar_in_bytes_then_the_profile(cli: Cli, csv_dir: Path) -> None:
    run = cli.terminal("datasets", "upload", str(csv_dir / "big.csv"), "--name", "big upload")

    assert run.code == 0, run
    assert "\x1b[" in run.raw  # a terminal: rich draws in colour and redraws in place
    transfer = re.compile(r"upload big\.csv.*━+ ([0-9.]+)/2\.7 MB")
    frames = [m for line in run.lines if (m := transfer.search(line))]
    assert frames, run
    assert frames[-1].group(1) == "2.7"  # the last frame: every byte sent
    assert "upload big.csv: done" in run.text
    # Then the dataset, profiled.
    assert re.search(r"name\s+big upload", run.text)
    assert re.search(r"state\s+READY", run.text)
    assert "60,000 rows, 4 columns, 2.7 MB" in run.text
    assert re.search(r"c\s+string\s+0\s+2\s+top: [uv] \(\d{2},\d{3}\), [uv] \(", run.text), run


def test_upload_json_is_the_dataset_and_no_bar(cli: Cli, csv_dir: Path) -> None:
    run = cli("datasets", "upload", str(csv_dir / "churn.csv"), "--output", "json")

    assert run.code == 0, run
    dataset = run.json()
    assert dataset["state"] == "READY"
    assert dataset["displayName"] == "churn"
    assert dataset["rowCount"] == "300"  # proto3 JSON: int64 as a string
    assert [c["name"] for c in dataset["columns"]] == [
        "customer_id",
        "tenure",
        "monthly_fee",
        "plan",
        "region",
        "churned",
    ]
    assert run.stderr == ""


def test_show_prints_the_profile_as_a_table(cli: Cli, churn_dataset: dict[str, Any]) -> None:
    run = cli("datasets", "show", churn_dataset["datasetId"])

    assert run.code == 0, run
    lines = run.stdout.splitlines()
    assert re.search(rf"dataset\s+{churn_dataset['datasetId']}", run.stdout)
    assert re.search(r"size\s+300 rows, 6 columns, ", run.stdout)
    header = next(line for line in lines if line.startswith("column"))
    assert header.split() == ["column", "type", "missing", "distinct", "summary"]
    rows = {line.split()[0]: line for line in lines[lines.index(header) + 2 :] if line.strip()}
    assert set(rows) == {"customer_id", "tenure", "monthly_fee", "plan", "region", "churned"}
    assert re.match(
        r"customer_id\s+integer \(id-like\)\s+0\s+300\s+min 1000 · max 1299", rows["customer_id"]
    )
    assert re.match(
        r"monthly_fee\s+float\s+15 \(5%\)\s+\d+\s+min [0-9.]+ · max", rows["monthly_fee"]
    )
    assert re.match(r"plan\s+string\s+0\s+3\s+top: (basic|plus|pro) \(\d+\)", rows["plan"])
    assert re.match(r"region\s+string\s+0\s+1\s+top: north \(300\)", rows["region"])


def test_list_shows_whole_ids_and_json_pages_through(
    cli: Cli, churn_dataset: dict[str, Any]
) -> None:
    table = cli("datasets", "list")
    listed = cli("datasets", "list", "--name-contains", "churn", "--output", "json")

    assert table.code == 0, table
    row = next(line for line in table.stdout.splitlines() if churn_dataset["datasetId"] in line)
    assert re.match(rf"{churn_dataset['datasetId']}\s+churn\s+READY\s+300\s+6\s+", row)
    assert listed.code == 0, listed
    assert churn_dataset["datasetId"] in [d["datasetId"] for d in listed.json()]
    assert {d["displayName"] for d in listed.json()} == {"churn"}


def test_download_writes_the_original_bytes(
    cli: Cli, churn_dataset: dict[str, Any], csv_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "copy.csv"

    run = cli("datasets", "download", churn_dataset["datasetId"], "-o", str(out))
    as_json = cli("datasets", "download", churn_dataset["datasetId"], "-o", str(out), "-O", "json")

    assert run.code == 0, run
    assert out.read_bytes() == (csv_dir / "churn.csv").read_bytes()
    assert re.fullmatch(rf"wrote \d+\.\d kB to {re.escape(str(out))}\n", run.stdout), run
    assert as_json.json() == {
        "datasetId": churn_dataset["datasetId"],
        "path": str(out),
        "bytes": out.stat().st_size,
    }


def test_download_as_parquet_then_as_csv_names_the_file_by_its_format(
    cli: Cli, churn_dataset: dict[str, Any], csv_dir: Path
) -> None:
    dataset_id = churn_dataset["datasetId"]

    as_parquet = cli("datasets", "download", dataset_id, "--format", "parquet", "-O", "json")
    as_csv = cli("datasets", "download", dataset_id, "-f", "CSV", "-O", "json")

    assert as_parquet.code == 0, as_parquet
    parquet_path = cli.cwd / f"{dataset_id}.parquet"
    assert as_parquet.json()["path"] == f"{dataset_id}.parquet"
    table = pq.read_table(parquet_path)
    original = pacsv.read_csv(csv_dir / "churn.csv")
    assert table.column_names == original.column_names
    assert table.num_rows == int(churn_dataset["rowCount"]) == 300
    assert table.column("customer_id").to_pylist() == original.column("customer_id").to_pylist()
    assert as_csv.code == 0, as_csv
    csv_path = cli.cwd / f"{dataset_id}.csv"
    assert pacsv.read_csv(csv_path).equals(pacsv.read_csv(csv_dir / "churn.csv"))


def test_delete_then_the_dataset_is_gone(cli: Cli, csv_dir: Path, tmp_path: Path) -> None:
    dataset = cli("datasets", "upload", str(csv_dir / "churn.csv"), "-O", "json").json()

    deleted = cli("datasets", "delete", dataset["datasetId"])
    shown = cli("datasets", "show", dataset["datasetId"])
    again = cli("-O", "json", "datasets", "delete", dataset["datasetId"])
    download = cli("datasets", "download", dataset["datasetId"], "-o", str(tmp_path / "x.csv"))

    assert deleted.code == 0, deleted
    assert deleted.stdout.strip() == f"deleted dataset {dataset['datasetId']}"
    assert shown.code == 3, shown
    assert shown.stderr == (
        f"error: NOT_FOUND DATASET_NOT_FOUND: no dataset '{dataset['datasetId']}'\n"
    )
    assert again.code == 3
    assert again.stdout == ""
    error = json.loads(again.stderr)["error"]
    assert error["status"] == "NOT_FOUND"
    assert error["reason"] == "DATASET_NOT_FOUND"
    assert len(error["requestId"]) >= 8  # for the gateway's log
    assert download.code == 3
    assert not (tmp_path / "x.csv").exists()


def test_upload_of_a_bad_csv_is_one_error_line(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3\n")  # a row with a field missing is refused at upload

    run = cli("datasets", "upload", str(bad))

    assert run.code == 4, run
    assert re.fullmatch(r"error: INVALID_ARGUMENT [A-Z_]+: .+\n", run.stderr), run
    assert "a" in run.stderr


def test_upload_of_a_missing_file_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    run = cli("datasets", "upload", str(tmp_path / "nope.csv"))

    assert run.code == 2, run
    assert "does not exist" in run.stderr


def test_upload_shows_the_format_and_the_header_repairs(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "export.tsv.gz"
    # pandas' to_csv with its index, tab-separated, gzip-compressed: a blank first name.
    path.write_bytes(gzip.compress(b"\tcity\tvisitors\n0\tOslo\t7\n1\tPorto\t2\n2\tBergen\t5\n"))

    run = cli("datasets", "upload", str(path), "--name", "export")

    assert run.code == 0, run
    assert re.search(r"format\s+gzip-compressed text, UTF-8, tab-separated", run.stdout), run
    assert re.search(r"header repairs", run.stdout)
    assert re.search(r"1\s+''\s+unnamed_0\s+blank name", run.stdout), run
    assert re.search(r"unnamed_0\s+integer \(row number\)", run.stdout), run


def test_versions_of_a_named_dataset(cli: Cli, tmp_path: Path) -> None:
    name = f"monthly-{uuid.uuid4().hex[:6]}"
    first, second = tmp_path / "january.csv", tmp_path / "february.csv"
    first.write_text("day,sales\n25/01/2024,3\n26/01/2024,4\n")
    second.write_text("day,sales\n25/02/2024,5\n26/02/2024,6\n27/02/2024,7\n")

    one = cli("datasets", "upload", str(first), "--name", name, "-O", "json")
    two = cli("datasets", "upload", str(second), "--new-version-of", name, "-O", "json")
    listed = cli("datasets", "versions", name)
    shown = cli("datasets", "show", f"{name}@1")
    latest = cli("datasets", "show", name, "-O", "json")
    typo = cli("datasets", "upload", str(second), "--new-version-of", f"{name}-typo")

    assert (one.json()["version"], two.json()["version"]) == ("1", "2")
    assert two.json()["displayName"] == name
    assert listed.code == 0, listed
    versions = [line.split()[0] for line in listed.stdout.splitlines() if line[:1].isdigit()]
    assert versions == ["2", "1"]
    assert re.search(rf"name\s+{name} version 1", shown.stdout), shown
    assert re.search(r"day\s+date %d/%m/%Y", shown.stdout), shown
    assert latest.json()["datasetId"] == two.json()["datasetId"]
    assert typo.code == 3, typo
    assert "DATASET_NOT_FOUND" in typo.stderr
