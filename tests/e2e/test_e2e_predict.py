"""Predict as a user meets it, through the real gateway and the real Trainer (the
e2e session's stack: NATS, MLflow with basic auth, the three services, the gateway):
values that must be refused with a reason and never a 5xx, trust flags on every row,
and explanations that add up to the model's raw score."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from google.protobuf import struct_pb2
from sklearn.datasets import load_diabetes, load_iris

from devstack.stack import Stack
from modelyard.training.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from modelyard_client.cli import typed_row
from runtime.errors import error_metadata, error_reason
from services.training.model import pyfunc_model
from tests.cli.cli_support import Cli
from tests.suite_support import mlflow_client_of, post_dataset, wait_final

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {stack.api_token}"}
    with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=60) as client:
        yield client


def churn_frame(rows: int = 400, seed: int = 3) -> pd.DataFrame:
    """`tenure` 1..60, `fee` 20..80, `plan` basic/plus/pro; `churned` yes/no."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "tenure": rng.integers(1, 61, size=rows),
            "fee": rng.uniform(20, 80, size=rows).round(2),
            "plan": rng.choice(["basic", "plus", "pro"], size=rows),
        }
    )
    frame.loc[[0, 1], "tenure"] = [1, 60]  # the exact training range
    signal = -0.06 * frame["tenure"] + 0.02 * frame["fee"] + (frame["plan"] == "basic")
    frame["churned"] = np.where(signal + rng.normal(0, 0.5, rows) > 0.0, "yes", "no")
    return frame


def tables() -> dict[str, tuple[pd.DataFrame, str]]:
    iris = load_iris(as_frame=True)
    flowers = iris.frame.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    flowers["species"] = flowers.pop("target").map(dict(enumerate(iris.target_names)))
    diabetes = load_diabetes(as_frame=True).frame.rename(columns={"target": "progression"})
    return {
        "churn": (churn_frame(), "churned"),
        "flowers": (flowers, "species"),
        "sugar": (diabetes, "progression"),
    }


@pytest.fixture(scope="module")
def models(api: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The three tables uploaded and trained at once; each model's name and table."""
    directory = tmp_path_factory.mktemp("predict-csv")
    jobs: dict[str, str] = {}
    frames: dict[str, pd.DataFrame] = {}
    for name, (frame, target) in tables().items():
        path = directory / f"{name}.csv"
        frame.to_csv(path, index=False)
        frames[name] = frame
        uploaded = post_dataset(api, path.read_bytes(), displayName=name)
        created = api.post(
            "/v1/trainingJobs",
            json={
                "datasetId": uploaded["datasetId"],
                "targetColumn": target,
                "registeredModelName": f"{name}-model",
            },
        )
        assert created.status_code == 200, created.text
        jobs[name] = created.json()["jobId"]
    for job_id in jobs.values():
        job = wait_final(api, f"/v1/trainingJobs/{job_id}", timeout=300)
        assert job["state"] == "SUCCEEDED", job.get("error")
    return {"frames": frames, "jobs": jobs}


def predict_raw(api: httpx.Client, model: str, body: str) -> httpx.Response:
    """A Predict whose JSON body is written by hand (NaN and Infinity are not JSON)."""
    return api.post(
        f"/v1/models/{model}:predict",
        content=body.encode(),
        headers={"Content-Type": "application/json"},
    )


def error_info(response: httpx.Response) -> dict[str, Any]:
    details = response.json()["error"]["details"]
    info: dict[str, Any] = next(d for d in details if d["@type"].endswith("ErrorInfo"))
    return info


GOOD_ROW = '{"tenure": 12, "fee": 50.5, "plan": "plus"}'


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_a_non_finite_json_number_is_a_400_naming_row_and_column(
    api: httpx.Client, models: dict[str, Any], number: str
) -> None:
    body = f'{{"rows": [{GOOD_ROW}, {{"tenure": 3, "fee": {number}, "plan": "pro"}}]}}'
    response = predict_raw(api, "churn-model", body)
    assert response.status_code == 400, response.text
    info = error_info(response)
    assert info["reason"] == "PREDICT_VALUE_NOT_FINITE"
    assert info["metadata"] == {"column": "fee", "rows": "1"}


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "inf", " -inf "])
def test_non_finite_text_in_a_numeric_column_is_refused_like_the_number(
    api: httpx.Client, models: dict[str, Any], text: str
) -> None:
    rows = [json.loads(GOOD_ROW), {"tenure": text, "fee": 40, "plan": "pro"}]
    response = api.post("/v1/models/churn-model:predict", json={"rows": rows})
    assert response.status_code == 400, response.text
    info = error_info(response)
    assert info["reason"] == "PREDICT_VALUE_NOT_FINITE"
    assert info["metadata"] == {"column": "tenure", "rows": "1"}
    assert repr(text) in response.json()["error"]["message"]


def test_other_text_in_a_numeric_column_stays_value_invalid(
    api: httpx.Client, models: dict[str, Any]
) -> None:
    response = api.post(
        "/v1/models/churn-model:predict",
        json={"rows": [{"tenure": "NA", "fee": 40, "plan": "pro"}]},
    )
    assert response.status_code == 400, response.text
    assert error_info(response)["reason"] == "PREDICT_VALUE_INVALID"


def test_the_cli_sends_a_csvs_missing_markers_as_null_and_infinity_as_text() -> None:
    row = typed_row({"a": "NA", "b": "NaN", "c": "", "d": "inf", "e": "7", "f": "2.5"})
    assert row == {"a": None, "b": None, "c": None, "d": "inf", "e": 7, "f": 2.5}


async def test_a_non_finite_double_over_grpc_is_invalid_argument(
    stack: Stack, models: dict[str, Any]
) -> None:
    async with grpc.aio.insecure_channel(stack.addresses["trainer"]) as channel:
        stub = trainer_service_pb2_grpc.TrainerServiceStub(channel)
        for number in (math.nan, math.inf, -math.inf):
            bad = struct_pb2.Struct()
            bad.update({"tenure": 5, "plan": "basic"})
            bad.fields["fee"].number_value = number
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Predict(
                    trainer_service_pb2.PredictRequest(model_name="churn-model", rows=[bad]),
                    metadata=(("authorization", f"Bearer {stack.service_token}"),),
                    timeout=30,
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_reason(refused.value) == "PREDICT_VALUE_NOT_FINITE"
            assert error_metadata(refused.value) == {"column": "fee", "rows": "0"}


def test_every_row_carries_its_trust_flags_and_the_answer_counts_them(
    api: httpx.Client, models: dict[str, Any]
) -> None:
    rows = [
        {"tenure": 12, "fee": 50.5, "plan": "plus"},  # like the training rows
        {"tenure": 12, "fee": 50.5, "plan": "platinum"},  # a plan never seen
        {"tenure": 90, "fee": 5, "plan": "basic"},  # both numbers outside the range
        {"tenure": 60, "fee": None, "plan": "basic"},  # 60 is the largest training value
        {"tenure": None, "fee": None, "plan": None},  # nothing to go on
        {"tenure": None, "fee": "", "plan": " "},  # blank text is missing too
        {"tenure": 0, "fee": 50, "plan": "pro"},  # below the range
    ]
    response = api.post("/v1/models/churn-model:predict", json={"rows": rows})
    assert response.status_code == 200, response.text
    answer = response.json()
    flags = [
        sorted((flag["kind"], flag["column"]) for flag in prediction["flags"])
        for prediction in answer["predictions"]
    ]
    assert flags == [
        [],
        [("KIND_UNSEEN_CATEGORY", "plan")],
        [("KIND_OUT_OF_RANGE", "fee"), ("KIND_OUT_OF_RANGE", "tenure")],
        [],
        [("KIND_ALL_MISSING", "")],
        [("KIND_ALL_MISSING", "")],
        [("KIND_OUT_OF_RANGE", "tenure")],
    ]
    assert answer["flagCounts"] == {
        "flaggedRows": "5",
        "unseenCategoryRows": "1",
        "outOfRangeRows": "2",
        "allMissingRows": "2",
    }
    # Flagged rows are still scored.
    assert all(p["value"] in ("yes", "no") for p in answer["predictions"])
    assert answer["featureNames"] == []  # asked for no explanation


def test_a_model_trained_before_flags_existed_predicts_without_flags(
    stack: Stack, api: httpx.Client, models: dict[str, Any], tmp_path: Path
) -> None:
    """The same booster and preprocessing without the `ranges` a model now keeps,
    registered as the earlier Trainer logged it (as the Trainer's MLflow user: the
    models another user made are not the Trainer's to serve)."""
    assert stack.mlflow is not None
    trainer = (stack.mlflow.trainer_username, stack.mlflow.trainer_password)
    with mlflow_client_of(stack.mlflow.url, *trainer):
        local = Path(
            mlflow.artifacts.download_artifacts("models:/churn-model/1", dst_path=str(tmp_path))
        )
        booster = next(local.rglob("model.txt"))
        preprocessing = next(local.rglob("preprocessing.json"))
        spec = json.loads(preprocessing.read_text())
        assert "ranges" in spec  # what the new Trainer keeps
        del spec["ranges"]
        old = tmp_path / "old_preprocessing.json"
        old.write_text(json.dumps(spec))
        mlflow.set_experiment("older-models")
        with mlflow.start_run():
            mlflow.pyfunc.log_model(
                name="model",
                python_model=pyfunc_model.__file__,
                artifacts={
                    pyfunc_model.BOOSTER_ARTIFACT: str(booster),
                    pyfunc_model.PREPROCESSING_ARTIFACT: str(old),
                },
                registered_model_name="older-churn",
                pip_requirements=["lightgbm", "pandas"],
            )
    rows = [
        {"tenure": 90, "fee": 5, "plan": "platinum"},
        {"tenure": 12, "fee": 50.5, "plan": "plus"},
    ]
    old_answer = api.post("/v1/models/older-churn:predict", json={"rows": rows, "version": "1"})
    assert old_answer.status_code == 200, old_answer.text
    new_answer = api.post("/v1/models/churn-model:predict", json={"rows": rows}).json()
    assert [p["flags"] for p in old_answer.json()["predictions"]] == [[], []]
    assert old_answer.json()["flagCounts"]["flaggedRows"] == "0"
    # The same model all the same: same predictions as the version with ranges.
    old_probabilities = [p["probabilities"] for p in old_answer.json()["predictions"]]
    new_probabilities = [p["probabilities"] for p in new_answer["predictions"]]
    assert np.allclose(old_probabilities, new_probabilities)


def _sample(models: dict[str, Any], name: str, target: str) -> list[dict[str, Any]]:
    frame: pd.DataFrame = models["frames"][name].drop(columns=[target])
    records = frame.sample(25, random_state=1).to_dict(orient="records")
    return [{str(key): value for key, value in record.items()} for record in records]


def _explained(api: httpx.Client, model: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    response = api.post(f"/v1/models/{model}:predict", json={"rows": rows, "explain": True})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _sums(explanation: dict[str, Any]) -> float:
    return float(explanation["baseValue"]) + float(np.sum(explanation["contributions"]))


def test_binary_contributions_add_up_to_the_log_odds_of_the_second_class(
    api: httpx.Client, models: dict[str, Any]
) -> None:
    rows = _sample(models, "churn", "churned")
    answer = _explained(api, "churn-model", rows)
    assert answer["featureNames"] == ["tenure", "fee", "plan"]
    for prediction in answer["predictions"]:
        (explanation,) = prediction["explanations"]
        assert explanation["className"] == "yes"
        assert len(explanation["contributions"]) == 3
        assert _sums(explanation) == pytest.approx(explanation["rawScore"], abs=1e-9)
        p_yes = prediction["probabilities"][1]
        assert 1 / (1 + math.exp(-explanation["rawScore"])) == pytest.approx(p_yes, abs=1e-9)
    # Some feature moves some row: contributions are not all zero.
    assert any(any(e["contributions"]) for p in answer["predictions"] for e in p["explanations"])


def test_multiclass_contributions_per_class_give_the_probabilities(
    api: httpx.Client, models: dict[str, Any]
) -> None:
    rows = _sample(models, "flowers", "species")
    answer = _explained(api, "flowers-model", rows)
    assert answer["classNames"] == ["setosa", "versicolor", "virginica"]
    for prediction in answer["predictions"]:
        explanations = prediction["explanations"]
        assert [e["className"] for e in explanations] == answer["classNames"]
        raw = np.array([_sums(e) for e in explanations])
        assert raw == pytest.approx([e["rawScore"] for e in explanations], abs=1e-9)
        softmax = np.exp(raw - raw.max()) / np.exp(raw - raw.max()).sum()
        assert softmax == pytest.approx(prediction["probabilities"], abs=1e-9)


def test_regression_contributions_add_up_to_the_predicted_value(
    api: httpx.Client, models: dict[str, Any]
) -> None:
    rows = _sample(models, "sugar", "progression")
    answer = _explained(api, "sugar-model", rows)
    assert answer["classNames"] == []
    assert len(answer["featureNames"]) == 10
    for prediction in answer["predictions"]:
        (explanation,) = prediction["explanations"]
        assert explanation["className"] == ""
        assert _sums(explanation) == pytest.approx(prediction["value"], abs=1e-6)


# -- the evaluation report ---------------------------------------------------------------


def _report(api: httpx.Client, job_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/trainingJobs/{job_id}/report")
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()["report"]
    return report


def _png(chart: dict[str, Any]) -> bytes:
    import base64

    data = base64.b64decode(chart["png"])
    assert data.startswith(b"\x89PNG")
    return data


def test_a_binary_jobs_report_has_its_confusion_matrix_curves_and_charts(
    api: httpx.Client, models: dict[str, Any]
) -> None:
    job_id = models["jobs"]["churn"]
    job = api.get(f"/v1/trainingJobs/{job_id}").json()
    report = _report(api, job_id)
    assert report["jobId"] == job_id
    assert report["task"] == "BINARY"
    assert report["classNames"] == ["no", "yes"]
    rows = int(job["summary"]["validationRows"])
    assert int(report["validationRows"]) == rows
    matrix = [[int(c) for c in row["counts"]] for row in report["confusionMatrix"]]
    assert sum(map(sum, matrix)) == rows
    accuracy = (matrix[0][0] + matrix[1][1]) / rows
    assert accuracy == pytest.approx(job["metrics"]["accuracy"])
    recall_yes = matrix[1][1] / sum(matrix[1])
    by_class = {item["className"]: item for item in report["classMetrics"]}
    assert by_class["yes"]["recall"] == pytest.approx(recall_yes)
    assert by_class["yes"]["precision"] == pytest.approx(job["metrics"]["precision"])
    assert report["rocCurve"]["area"] == pytest.approx(job["metrics"]["roc_auc"])
    assert report["rocCurve"]["x"][0] == 0
    assert report["rocCurve"]["y"][-1] == 1
    assert report["precisionRecallCurve"]["x"]
    assert len(report["calibrationCurve"]["x"]) >= 2
    names = [chart["name"] for chart in report["charts"]]
    assert names == ["confusion_matrix", "roc_curve", "precision_recall_curve", "calibration_curve"]
    assert all(_png(chart) for chart in report["charts"])


def test_a_regression_jobs_report_has_residuals_and_predicted_against_actual(
    api: httpx.Client, models: dict[str, Any]
) -> None:
    job_id = models["jobs"]["sugar"]
    job = api.get(f"/v1/trainingJobs/{job_id}").json()
    report = _report(api, job_id)
    assert report["task"] == "REGRESSION"
    assert report["confusionMatrix"] == []
    predicted = np.array(report["predictedVsActual"]["x"])
    actual = np.array(report["predictedVsActual"]["y"])
    assert len(predicted) == int(job["summary"]["validationRows"])
    rmse = float(np.sqrt(np.mean((actual - predicted) ** 2)))
    assert rmse == pytest.approx(job["metrics"]["rmse"])
    assert report["residuals"]["y"] == pytest.approx((actual - predicted).tolist())
    assert [chart["name"] for chart in report["charts"]] == ["predicted_vs_actual", "residuals"]


def test_the_report_files_are_in_the_mlflow_run(
    stack: Stack, api: httpx.Client, models: dict[str, Any], tmp_path: Path
) -> None:
    assert stack.mlflow is not None
    job = api.get(f"/v1/trainingJobs/{models['jobs']['flowers']}").json()
    with mlflow_client_of(stack.mlflow.url, stack.mlflow.username, stack.mlflow.password) as client:
        files = {
            Path(f.path).name for f in client.list_artifacts(job["mlflow"]["runId"], "evaluation")
        }
        local = client.download_artifacts(
            job["mlflow"]["runId"], "evaluation/report.json", str(tmp_path)
        )
    assert files == {"report.json", "confusion_matrix.png", "calibration_curve.png"}
    stored = json.loads(Path(local).read_text())
    served = _report(api, job["jobId"])
    assert stored["confusionMatrix"] == served["confusionMatrix"]
    assert len(stored["confusionMatrix"]) == 3  # three classes
    assert "charts" not in stored


def test_a_job_without_a_report_is_404_with_a_reason(
    api: httpx.Client, models: dict[str, Any]
) -> None:
    missing = api.get("/v1/trainingJobs/no-such-job/report")
    assert missing.status_code == 404
    assert error_info(missing)["reason"] == "JOB_NOT_FOUND"
    dataset = api.get("/v1/datasets").json()["datasets"][0]
    failed = api.post(
        "/v1/trainingJobs",
        json={
            "datasetId": dataset["datasetId"],
            "targetColumn": dataset["columns"][0]["name"],
            "task": "BINARY",
        },
    )
    assert failed.status_code == 200, failed.text
    job = wait_final(api, f"/v1/trainingJobs/{failed.json()['jobId']}", timeout=300)
    assert job["state"] == "FAILED"
    response = api.get(f"/v1/trainingJobs/{job['jobId']}/report")
    assert response.status_code == 404
    info = error_info(response)
    assert info["reason"] == "REPORT_NOT_FOUND"
    assert info["metadata"] == {"job_id": job["jobId"], "state": "FAILED"}


def test_modelyard_jobs_report_prints_the_confusion_matrix(
    stack: Stack, models: dict[str, Any], tmp_path: Path
) -> None:
    cli = Cli(stack.gateway_url, stack.api_token, tmp_path)
    job_id = models["jobs"]["flowers"]
    shown = cli("jobs", "report", job_id, "--charts", str(tmp_path / "charts"))
    assert shown.code == 0, shown
    text = shown.stdout
    assert "confusion matrix" in text
    for name in ("setosa", "versicolor", "virginica", "precision", "recall"):
        assert name in text
    assert sorted(p.name for p in (tmp_path / "charts").iterdir()) == [
        "calibration_curve.png",
        "confusion_matrix.png",
    ]
    as_json = cli("jobs", "report", job_id, "--output", "json")
    assert as_json.code == 0, as_json
    assert as_json.json()["classNames"] == ["setosa", "versicolor", "virginica"]


# The column-wise form, `columns`: the same rows, the same answer and the same refusals.

FLAGGED_ROWS: list[dict[str, Any]] = [
    {"tenure": 12, "fee": 50.5, "plan": "plus"},
    {"tenure": 12, "fee": 50.5, "plan": "platinum"},
    {"tenure": 90, "fee": 5, "plan": "basic"},
    {"tenure": 60, "fee": None, "plan": "basic"},
    {"tenure": None, "fee": None, "plan": None},
    {"tenure": 0, "fee": 50, "plan": "pro"},
]


def as_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {name: [row.get(name) for row in rows] for name in rows[0]}


@pytest.mark.parametrize("explain", [False, True])
def test_columns_answer_exactly_as_the_same_rows_do(
    api: httpx.Client, models: dict[str, Any], explain: bool
) -> None:
    url = "/v1/models/churn-model:predict"
    for rows in (FLAGGED_ROWS, _sample(models, "churn", "churned")):
        by_rows = api.post(url, json={"rows": rows, "explain": explain})
        by_columns = api.post(url, json={"columns": as_columns(rows), "explain": explain})
        assert by_rows.status_code == 200, by_rows.text
        assert by_columns.status_code == 200, by_columns.text
        assert by_columns.json() == by_rows.json()
    flagged = api.post(url, json={"columns": as_columns(FLAGGED_ROWS)}).json()
    assert flagged["flagCounts"]["flaggedRows"] == "4"  # the flags are there, not just equal


def test_columns_of_numbers_only_score_as_rows_for_every_task(
    api: httpx.Client, models: dict[str, Any]
) -> None:
    """Whole numeric columns take the Trainer's array path: same values as rows."""
    for name, target in (("flowers", "species"), ("sugar", "progression")):
        rows = _sample(models, name, target)
        url = f"/v1/models/{name}-model:predict"
        by_rows = api.post(url, json={"rows": rows}).json()
        by_columns = api.post(url, json={"columns": as_columns(rows)}).json()
        assert by_columns == by_rows
        assert len(by_columns["predictions"]) == 25


def test_a_column_the_model_does_not_read_is_ignored_as_in_rows(
    api: httpx.Client, models: dict[str, Any]
) -> None:
    columns = as_columns(FLAGGED_ROWS) | {"customer_id": list(range(len(FLAGGED_ROWS)))}
    response = api.post("/v1/models/churn-model:predict", json={"columns": columns})
    plain = api.post("/v1/models/churn-model:predict", json={"columns": as_columns(FLAGGED_ROWS)})
    assert response.status_code == 200, response.text
    assert response.json() == plain.json()


@pytest.mark.parametrize(
    ("body", "reason", "metadata"),
    [
        (
            '{"columns": {"tenure": [1, 2], "fee": [3.5], "plan": ["pro", "plus"]}}',
            "PREDICT_COLUMNS_RAGGED",
            {"column": "plan"},
        ),
        (
            '{"columns": {"tenure": [1], "plan": ["pro"]}}',
            "PREDICT_COLUMNS_MISSING",
            {"column": "fee"},
        ),
        (
            '{"columns": {"tenure": [1], "fee": [3], "plan": ["pro"]}, "rows": [{"tenure": 1}]}',
            "PREDICT_ROWS_AND_COLUMNS",
            {},
        ),
        ('{"columns": {"tenure": [], "fee": [], "plan": []}}', "PREDICT_ROWS_EMPTY", {}),
        (
            '{"columns": {"tenure": [1, 2], "fee": [3, NaN], "plan": ["pro", "plus"]}}',
            "PREDICT_VALUE_NOT_FINITE",
            {"column": "fee", "rows": "1"},
        ),
        (
            '{"columns": {"tenure": [1, 2, 1e999], "fee": [3, 4, 5], "plan": ["a", "b", "c"]}}',
            "PREDICT_VALUE_NOT_FINITE",
            {"column": "tenure", "rows": "2"},
        ),
        (
            '{"columns": {"tenure": [1, null, -Infinity], "fee": [3,4,5], "plan": ["a", "", ""]}}',
            "PREDICT_VALUE_NOT_FINITE",
            {"column": "tenure", "rows": "2"},
        ),
        (
            '{"columns": {"tenure": [1, {"a": 1}], "fee": [3, 4], "plan": ["a", "b"]}}',
            "PREDICT_VALUE_INVALID",
            {"column": "tenure", "rows": "1"},
        ),
        (
            '{"columns": {"tenure": [1, "abc"], "fee": [3, 4], "plan": ["a", "b"]}}',
            "PREDICT_VALUE_INVALID",
            {"column": "tenure", "rows": "1"},
        ),
    ],
)
def test_bad_columns_are_a_400_with_a_reason(
    api: httpx.Client, models: dict[str, Any], body: str, reason: str, metadata: dict[str, str]
) -> None:
    response = predict_raw(api, "churn-model", body)
    assert response.status_code == 400, response.text
    info = error_info(response)
    assert info["reason"] == reason
    assert info.get("metadata", {}) == metadata


async def test_columns_over_grpc_score_and_refuse_non_finite_doubles(
    stack: Stack, models: dict[str, Any]
) -> None:
    auth = (("authorization", f"Bearer {stack.service_token}"),)
    async with grpc.aio.insecure_channel(stack.addresses["trainer"]) as channel:
        stub = trainer_service_pb2_grpc.TrainerServiceStub(channel)
        rows = []
        for row in FLAGGED_ROWS:
            struct = struct_pb2.Struct()
            struct.update(row)
            rows.append(struct)
        by_rows = await stub.Predict(
            trainer_service_pb2.PredictRequest(model_name="churn-model", rows=rows),
            metadata=auth,
            timeout=30,
        )
        request = trainer_service_pb2.PredictRequest(model_name="churn-model")
        for name, values in as_columns(FLAGGED_ROWS).items():
            request.columns[name].extend(values)
        by_columns = await stub.Predict(request, metadata=auth, timeout=30)
        assert by_columns == by_rows
        for number in (math.nan, math.inf, -math.inf):
            bad = trainer_service_pb2.PredictRequest(model_name="churn-model")
            bad.columns["tenure"].extend([5, 6])
            bad.columns["plan"].extend(["basic", "pro"])
            bad.columns["fee"].extend([1.0, number])  # numbers only: the array path
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Predict(bad, metadata=auth, timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_reason(refused.value) == "PREDICT_VALUE_NOT_FINITE"
            assert error_metadata(refused.value) == {"column": "fee", "rows": "1"}
