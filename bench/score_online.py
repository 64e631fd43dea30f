"""Scoring benchmark, parts (b) and (c): online Predict through the gateway against
`mlflow models serve`, and while a job trains (part (a), batch scoring: bench/score.py).

    .venv/bin/python -m bench.score_online [--train-rows 20000] [--single 100] [--batch 10]

Starts a real stack (nats-server, MLflow with basic auth, the services, the
gateway with auth on) whose Trainers are split as compose and Kubernetes run
them: one serving-only Trainer (`MODELYARD_TRAINER_ROLE=serving`, which the
gateway calls) and one training Trainer (`training`). It trains one model on a
generated 28-column table (bench/train.py's), then measures, in the same run:

(b) online Predict through the gateway (`POST /v1/models/{name}:predict`, the
    registered version by number) with 1-row and 1,000-row requests from 8
    concurrent clients: p50 and p99 latency and rows/s; next to `mlflow models
    serve` of the same registered version on this machine (`POST /invocations`,
    the same rows and clients). One row is sent as a JSON object by both
    (`rows`, `dataframe_records`); 1,000 rows in each one's compact form:
    Predict's `columns` (a list of values per column) and MLflow's
    `dataframe_split` (column names once, then a list of values per row);
(c) the same Predict figures while a training job (a larger table) runs on the
    training Trainer, which runs at `MODELYARD_TRAINER_NICE=19` as compose and
    Kubernetes run it (`--training-nice 0` measures it without).

Targets (issue 11): 1-row p99 <= 25 ms, and >= 2x MLflow serve's rows/s.
The machine is shared (2 cores for every process here, the clients included):
the figures are what was measured, not a capacity.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from bench.train import Platform, large_csv
from devstack.processes import free_port
from devstack.stack import Stack, StackOptions

CLIENTS = 8
# The clients share the 2 cores with what they measure, so they do as little as a
# client can, the same for both sides: bodies are JSON-encoded once, before timing,
# and one TLS context (unused on http://) serves every client instead of each
# loading the CA bundle.
JSON_HEADERS = {"Content-Type": "application/json"}
TLS_CONTEXT = ssl.create_default_context()
MODEL_NAME = "bench-score"
TARGET = "label"


@dataclass
class Figures:
    case: str
    requests: int
    rows_per_request: int
    p50_ms: float
    p99_ms: float
    rows_per_second: float
    errors: int


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


def hammer(
    case: str,
    send: Any,
    bodies: list[Any],
    requests_per_client: int,
    rows_per_request: int,
) -> Figures:
    """`CLIENTS` threads, each sending `requests_per_client` requests one after another."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def client(index: int) -> None:
        nonlocal errors
        with httpx.Client(timeout=60, verify=TLS_CONTEXT) as http:
            for number in range(requests_per_client):
                body = bodies[(index * requests_per_client + number) % len(bodies)]
                started = time.perf_counter()
                ok = send(http, body)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    errors += 0 if ok else 1

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    wall = time.perf_counter() - started
    count = len(latencies)
    return Figures(
        case=case,
        requests=count,
        rows_per_request=rows_per_request,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        rows_per_second=(count - errors) * rows_per_request / wall,
        errors=errors,
    )


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON objects, missing values as null (JSON has no NaN)."""
    rows: list[dict[str, Any]] = json.loads(frame.to_json(orient="records"))
    return rows


def gateway_body(version: int) -> Any:
    def body(frame: pd.DataFrame) -> bytes:
        """One row as `rows`; many in Predict's column-wise form, `columns` (no key per value)."""
        rows = records(frame)
        document: dict[str, Any] = {"version": str(version)}
        if len(rows) == 1:
            document["rows"] = rows
        else:
            document["columns"] = {name: [row[name] for row in rows] for name in frame.columns}
        return json.dumps(document).encode()

    return body


def mlflow_body(frame: pd.DataFrame) -> bytes:
    """One row as `dataframe_records`; many in MLflow's compact form, `dataframe_split`
    (columns named once, then rows of values): each side's own bulk form."""
    if len(frame) == 1:
        return json.dumps({"dataframe_records": records(frame)}).encode()
    split: dict[str, Any] = json.loads(frame.to_json(orient="split", index=False))
    return json.dumps({"dataframe_split": split}).encode()


def gateway_sender(stack: Stack, version: int) -> Any:
    url = f"{stack.gateway_url}/v1/models/{MODEL_NAME}:predict"
    headers = {"Authorization": f"Bearer {stack.api_token}"} | JSON_HEADERS

    def send(http: httpx.Client, body: bytes) -> bool:
        response = http.post(url, content=body, headers=headers)
        return response.status_code == 200

    return send


def mlflow_sender(port: int) -> Any:
    url = f"http://127.0.0.1:{port}/invocations"

    def send(http: httpx.Client, body: bytes) -> bool:
        response = http.post(url, content=body, headers=JSON_HEADERS)
        return response.status_code == 200

    return send


def measure(
    label: str, send: Any, body: Any, frame: pd.DataFrame, single: int, batch: int
) -> list[Figures]:
    singles = [body(frame.iloc[[index]]) for index in range(200)]
    batches = [body(frame.iloc[start : start + 1000]) for start in range(0, 5000, 1000)]
    hammer(f"{label} warm-up", send, singles, 5, 1)
    return [
        hammer(f"{label}, 1-row", send, singles, single, 1),
        hammer(f"{label}, 1000-row", send, batches, batch, 1000),
    ]


def start_mlflow_serve(
    stack: Stack, version: int, work_dir: Path
) -> tuple[subprocess.Popen[bytes], int]:
    assert stack.mlflow is not None
    port = free_port()
    env = os.environ | {
        # `mlflow models serve` starts `uvicorn` by name: the venv's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": stack.mlflow.url,
        "MLFLOW_TRACKING_USERNAME": stack.mlflow.username,
        "MLFLOW_TRACKING_PASSWORD": stack.mlflow.password,
    }
    log = (work_dir / "mlflow-serve.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "models", "serve",
            "-m", f"models:/{MODEL_NAME}/{version}",
            "-p", str(port), "-h", "127.0.0.1", "--env-manager", "local",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                return process, port
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited; see {work_dir / 'mlflow-serve.log'}")
        time.sleep(0.5)
    process.terminate()
    raise RuntimeError("mlflow models serve did not answer /ping")


def split_stack(work_dir: Path, training_nice: int = 19) -> Stack:
    """A stack whose gateway and Jobs call a serving-only Trainer, and a training one."""
    options = StackOptions(
        work_dir=work_dir / "stack",
        extra_env={"trainer": {"MODELYARD_TRAINER_ROLE": "serving"}},
    )
    stack = Stack(options)
    stack.__enter__()
    try:
        # As compose and Kubernetes run it: training yields the shared CPUs to Predict.
        options.extra_env["trainer"] = {
            "MODELYARD_TRAINER_ROLE": "training",
            "MODELYARD_TRAINER_NICE": str(training_nice),
        }
        stack.start_service("trainer", instance=1)
    except BaseException:
        stack.stop()
        raise
    return stack


def report(figures: list[Figures], busy: list[Figures]) -> None:
    print()
    print(f"{'case':52} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'rows/s':>10} {'errors':>6}")
    print("-" * 98)
    for item in [*figures, *busy]:
        print(
            f"{item.case:52} {item.requests:>8} {item.p50_ms:>8.1f} {item.p99_ms:>8.1f} "
            f"{item.rows_per_second:>10.0f} {item.errors:>6}"
        )
    by_case = {item.case: item for item in figures}
    print()
    for size in ("1-row", "1000-row"):
        ours = by_case[f"(b) modelyard Predict, {size}"]
        theirs = by_case[f"(b) mlflow models serve, {size}"]
        ratio = ours.rows_per_second / theirs.rows_per_second if theirs.rows_per_second else 0
        verdict = "hit" if ratio >= 2 else "MISS"
        print(f"{size}: rows/s {ratio:.2f}x mlflow models serve (target >= 2x): {verdict}")
    single = by_case["(b) modelyard Predict, 1-row"]
    verdict = "hit" if single.p99_ms <= 25 else "MISS"
    print(f"1-row p99 {single.p99_ms:.1f} ms (target <= 25 ms): {verdict}")
    for item in busy:
        if item.case.endswith("1-row"):
            verdict = "hit" if item.p99_ms <= 25 else "MISS"
            print(f"while training: 1-row p99 {item.p99_ms:.1f} ms (target <= 25 ms): {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-rows", type=int, default=20_000)
    parser.add_argument("--busy-rows", type=int, default=400_000)
    parser.add_argument("--single", type=int, default=100, help="1-row requests per client")
    parser.add_argument("--batch", type=int, default=10, help="1000-row requests per client")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument(
        "--training-nice",
        type=int,
        default=19,
        help="the training Trainer's MODELYARD_TRAINER_NICE",
    )
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-score-") as scratch:
        work_dir = arguments.work_dir or Path(scratch)
        work_dir.mkdir(parents=True, exist_ok=True)
        stack = split_stack(work_dir, arguments.training_nice)
        serve: subprocess.Popen[bytes] | None = None
        try:
            platform = Platform(stack)
            csv = large_csv(work_dir, arguments.train_rows)
            dataset_id = platform.upload(csv, "bench-score")
            response = platform.http.post(
                "/v1/trainingJobs",
                json={
                    "datasetId": dataset_id,
                    "targetColumn": TARGET,
                    "registeredModelName": MODEL_NAME,
                },
            )
            response.raise_for_status()
            job = platform.wait_final(response.json())
            assert job["state"] == "SUCCEEDED", job
            version = int(job["mlflow"]["registeredModelVersion"])
            frame = pd.read_csv(csv, nrows=5000).drop(columns=[TARGET])

            ours, our_body = gateway_sender(stack, version), gateway_body(version)
            figures = measure(
                "(b) modelyard Predict", ours, our_body, frame,
                arguments.single, arguments.batch,
            )  # fmt: skip
            serve, port = start_mlflow_serve(stack, version, work_dir)
            figures += measure(
                "(b) mlflow models serve", mlflow_sender(port), mlflow_body, frame,
                arguments.single, arguments.batch,
            )  # fmt: skip
            serve.terminate()
            serve.wait(30)
            serve = None

            busy_csv = large_csv(work_dir, arguments.busy_rows, seed=7)
            busy_id = platform.upload(busy_csv, "bench-score-busy")
            started = platform.http.post(
                "/v1/trainingJobs",
                json={"datasetId": busy_id, "targetColumn": TARGET},
            )
            started.raise_for_status()
            busy_job = started.json()
            while platform.http.get(f"/v1/trainingJobs/{busy_job['jobId']}").json()[
                "state"
            ] not in ("RUNNING", "SUCCEEDED", "FAILED"):
                time.sleep(0.2)
            busy = measure(
                "(c) Predict while a job trains", ours, our_body, frame,
                arguments.single, arguments.batch,
            )  # fmt: skip
            state = platform.http.get(f"/v1/trainingJobs/{busy_job['jobId']}").json()["state"]
            print(f"training job state at the end of (c): {state}")
            report(figures, busy)
            platform.http.post(f"/v1/trainingJobs/{busy_job['jobId']}:cancel")
        finally:
            if serve is not None:
                serve.terminate()
                serve.wait(30)
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
