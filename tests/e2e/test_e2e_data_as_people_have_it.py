"""Issue 10 end to end, through the gateway on the real stack: one shop's table as
people have it, uploaded as five versions of one named dataset in five shapes (pandas'
`to_csv` with its index and dates written day first, a file with a trailing delimiter,
a gzip CSV, an XLSX written by pandas, a Parquet file written by pandas); trained on by
name (the latest version) and by `name@version`; predicted on with the same date
strings the files hold, over REST and with `mlflow.pyfunc.load_model`."""

from __future__ import annotations

import gzip
import io
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from devstack.stack import Stack
from tests.suite_support import mlflow_client_of, post_dataset, wait_final

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PARQUET = "application/vnd.apache.parquet"
ROWS = 1500


def busy_days(rows: int, seed: int) -> pd.DataFrame:
    """Whether a shop is busy: weekends and evenings are, and nothing else tells."""
    rng = np.random.default_rng(seed)
    days = pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 700, rows), unit="D")
    hours = rng.integers(0, 24, rows)
    busy = (days.day_of_week >= 5) | (hours >= 18)
    return pd.DataFrame(
        {
            "day": days,
            "at": days + pd.to_timedelta(hours, unit="h"),
            "noise": rng.normal(0, 1, rows).round(3),
            "busy": np.where(busy, "yes", "no"),
        }
    )


def as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """The dates as a European shop's till exports them."""
    return frame.assign(
        day=frame["day"].dt.strftime("%d/%m/%Y"), at=frame["at"].dt.strftime("%m/%d/%Y %H:%M")
    )


def pandas_csv(frame: pd.DataFrame) -> bytes:
    return as_text(frame).to_csv().encode()  # with pandas' index: a blank first header cell


def trailing_delimiter_csv(frame: pd.DataFrame) -> bytes:
    lines = as_text(frame).to_csv(index=False).splitlines()
    return "".join(f"{line},\r\n" for line in lines).encode()


def gzip_csv(frame: pd.DataFrame) -> bytes:
    return gzip.compress(as_text(frame).to_csv(index=False).encode())


def xlsx(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_excel(buffer, index=False, engine="openpyxl")  # real date cells
    return buffer.getvalue()


def parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.assign(day=frame["day"].dt.date).to_parquet(buffer)  # date32 and timestamp columns
    return buffer.getvalue()


def upload(api: httpx.Client, body: bytes, content_type: str, **params: str) -> dict[str, Any]:
    dataset = post_dataset(api, body, content_type, **params)
    assert dataset["state"] == "READY"
    assert dataset["rowCount"] == str(ROWS)
    return dataset


def columns_of(dataset: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {column["name"]: column for column in dataset["columns"]}


def date_types(dataset: dict[str, Any]) -> tuple[str, str]:
    columns = columns_of(dataset)
    return columns["day"]["dataType"], columns["at"]["dataType"]


def start_job(api: httpx.Client, reference: str, model_name: str) -> dict[str, Any]:
    created = api.post(
        "/v1/trainingJobs",
        json={
            "datasetId": reference,
            "targetColumn": "busy",
            "task": "AUTO",
            "registeredModelName": model_name,
        },
    )
    assert created.status_code == 200, created.text
    job: dict[str, Any] = created.json()
    return job


def predicted_labels(api: httpx.Client, model_name: str, rows: list[dict[str, Any]]) -> list[str]:
    predicted = api.post(f"/v1/models/{model_name}:predict", json={"rows": rows})
    assert predicted.status_code == 200, predicted.text
    return [item["value"] for item in predicted.json()["predictions"]]


@pytest.fixture
def mlflow_user(stack: Stack) -> Iterator[None]:
    assert stack.mlflow is not None
    with mlflow_client_of(stack.mlflow.url, stack.mlflow.username, stack.mlflow.password):
        yield


# A Saturday morning (busy: a weekend) and a Tuesday morning (not busy), as each file wrote them.
AS_CSV = [
    {"day": "23/03/2024", "at": "03/23/2024 10:00", "noise": 0.1},
    {"day": "19/03/2024", "at": "03/19/2024 09:00", "noise": 0.1},
]
AS_ISO = [
    {"day": "2024-03-23", "at": "2024-03-23 10:00:00", "noise": 0.1},
    {"day": "2024-03-19", "at": "2024-03-19 09:00:00", "noise": 0.1},
]


def test_one_table_in_five_shapes_and_versions_trains_by_name_and_predicts_from_its_strings(
    api: httpx.Client, mlflow_user: None
) -> None:
    name = f"shop-{uuid.uuid4().hex[:6]}"
    frame = busy_days(ROWS, seed=1)

    # 1. pandas' to_csv: the index is a row-number column under a blank header cell.
    first = upload(api, pandas_csv(frame), "text/csv", displayName=name)
    columns = columns_of(first)
    assert first["headerRepairs"] == [
        {
            "columnIndex": 1,
            "originalName": "",
            "newName": "unnamed_0",
            "reason": "REASON_BLANK_NAME",
        }
    ]
    assert columns["unnamed_0"]["rowNumber"] is True
    assert date_types(first) == ("DATE", "TIMESTAMP")
    assert columns["day"]["profile"]["dateFormat"] == "%d/%m/%Y"
    assert columns["at"]["profile"]["dateFormat"] == "%m/%d/%Y %H:%M"

    # 2. A trailing delimiter on every line: the empty last column is dropped, and said so.
    second = upload(api, trailing_delimiter_csv(frame), "text/csv", newVersionOf=name)
    assert list(columns_of(second)) == ["day", "at", "noise", "busy"]
    assert [(r["columnIndex"], r["reason"]) for r in second["headerRepairs"]] == [
        (5, "REASON_EMPTY_TRAILING_COLUMN")
    ]

    # 3. gzip, 4. XLSX (real date cells), 5. Parquet (date32 and timestamp columns).
    third = upload(api, gzip_csv(frame), "application/gzip", newVersionOf=name)
    fourth = upload(api, xlsx(frame), XLSX, newVersionOf=name)
    fifth = upload(api, parquet(frame), PARQUET, newVersionOf=name)
    assert third["sourceFormat"]["compression"] == "COMPRESSION_GZIP"
    assert fourth["sourceFormat"]["format"] == "FORMAT_XLSX"
    assert fifth["sourceFormat"]["format"] == "FORMAT_PARQUET"
    for dataset in (second, third, fourth, fifth):
        assert date_types(dataset) == ("DATE", "TIMESTAMP"), dataset["sourceFormat"]
    assert [d["version"] for d in (first, second, third, fourth, fifth)] == list("12345")

    versions = api.get("/v1/datasets:versions", params={"displayName": name}).json()
    assert [item["version"] for item in versions["datasets"]] == list("54321")

    # Trained by name (the latest version: the Parquet file) and by name@1 (pandas' CSV).
    by_name = start_job(api, name, f"{name}-latest")
    by_version = start_job(api, f"{name}@1", f"{name}-first")
    assert by_name["datasetId"] == fifth["datasetId"]
    assert by_version["datasetId"] == first["datasetId"]
    latest = wait_final(api, f"/v1/trainingJobs/{by_name['jobId']}")
    earliest = wait_final(api, f"/v1/trainingJobs/{by_version['jobId']}")

    for job, version in ((latest, "5"), (earliest, "1")):
        assert job["state"] == "SUCCEEDED", job.get("error")
        features = set(job["summary"]["features"])
        assert {"day__year", "day__dayofweek", "at__hour", "at__elapsed_days"} <= features
        assert job["metrics"]["accuracy"] > 0.9  # only the date parts can tell
        run = mlflow.get_run(job["mlflow"]["runId"])
        assert run.data.tags["modelyard.dataset_name"] == name
        assert run.data.tags["modelyard.dataset_version"] == version
    dropped = {item["name"]: item["reason"] for item in earliest["summary"]["droppedColumns"]}
    assert dropped == {"unnamed_0": "row_number"}
    assert "droppedColumns" not in latest["summary"] or not latest["summary"]["droppedColumns"]

    # Predict takes the dates as each file wrote them.
    assert predicted_labels(api, f"{name}-first", AS_CSV) == ["yes", "no"]
    assert predicted_labels(api, f"{name}-latest", AS_ISO) == ["yes", "no"]
    model = mlflow.pyfunc.load_model(earliest["mlflow"]["modelUri"])
    scored = model.predict(pd.read_csv(io.StringIO(pd.DataFrame(AS_CSV).to_csv(index=False))))
    assert list(pd.DataFrame(scored)["prediction"]) == ["yes", "no"]
