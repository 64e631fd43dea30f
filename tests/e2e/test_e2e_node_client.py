"""The Node.js example client (examples/node: @grpc/grpc-js and @grpc/proto-loader
loading the repository's protos) runs the whole path against the live stack:
upload, train, watch, get, predict, and decodes an error's details."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "node"
SAMPLE = REPO_ROOT / "devstack" / "samples" / "iris.csv"


def run_client(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None or not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").exists():
        pytest.fail("Node.js or examples/node/node_modules is missing: run `make install`")
    return subprocess.run(
        [node, "client.js", *args],
        cwd=EXAMPLE,
        env={
            "PATH": str(Path(node).parent),
            "MODELYARD_DATASET_ADDRESS": stack.addresses["dataset"],
            "MODELYARD_JOBS_ADDRESS": stack.addresses["jobs"],
            "MODELYARD_TRAINER_ADDRESS": stack.addresses["trainer"],
            "MODELYARD_SERVICE_TOKEN": stack.service_token,
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_node_client_uploads_trains_watches_gets_and_predicts(stack: Stack) -> None:
    done = run_client(stack, str(SAMPLE), "species")
    assert done.returncode == 0, done.stderr[-4000:]
    steps: dict[str, dict[str, Any]] = {}
    for line in done.stdout.splitlines():
        report = json.loads(line)
        steps[report.pop("step")] = report
    assert list(steps) == ["upload", "train", "watch", "get", "predict", "error"]

    upload = steps["upload"]
    assert upload["state"] == "READY"
    assert upload["rowCount"] == "150"  # int64 arrives as a string
    assert "species:STRING" in upload["columns"]  # enums by name

    assert steps["train"]["state"] == "QUEUED"
    assert steps["watch"]["state"] == "SUCCEEDED"
    get = steps["get"]
    assert get["state"] == "SUCCEEDED"  # read right after the watch: never stale
    assert get["metrics"] == steps["watch"]["metrics"]
    assert {"accuracy", "macro_f1", "log_loss"} <= set(get["metrics"])
    assert get["task"] == "MULTICLASS"
    assert int(get["version"]) >= 1

    predict = steps["predict"]
    assert predict["modelVersion"] == get["version"]
    assert sorted(predict["classNames"]) == ["setosa", "versicolor", "virginica"]
    assert len(predict["predictions"]) == 3
    for prediction in predict["predictions"]:
        assert prediction["value"] in predict["classNames"]
        assert sum(prediction["probabilities"]) == pytest.approx(1.0, abs=1e-6)

    error = steps["error"]  # decoded from grpc-status-details-bin
    assert error["code"] == "NOT_FOUND"
    assert (error["reason"], error["domain"]) == ("JOB_NOT_FOUND", "modelyard")
    assert error["metadata"] == {"job_id": "no-such-job"}


def test_node_client_reports_a_refused_call_with_its_reason(stack: Stack) -> None:
    done = run_client(stack, str(SAMPLE), "no_such_column")
    assert done.returncode == 1
    failure = json.loads(done.stderr.strip().splitlines()[-1].removeprefix("failed: "))
    assert failure["code"] == "INVALID_ARGUMENT"
    assert failure["reason"] == "TARGET_COLUMN_NOT_FOUND"
