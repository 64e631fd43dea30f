"""Scoring benchmark, part (a): batch scoring of 1M rows x 28 columns end to end, against
a direct script on the same registered model version.

    .venv/bin/python -m bench.score [--rows 1000000] [--train-rows 100000]

The table is bench/train.py's 28-column generator (24 numeric columns with some
missing values, 3 text columns, a yes/no target), generated here, never committed.
A model of `label` is trained through the platform on `--train-rows` other rows of
the same generator and registered; then:

- platform: a scoring job (`POST /v1/scoringJobs`) on the stored 1M-row dataset,
  timed from submit to SUCCEEDED (the output stored as a new dataset), with the
  Trainer's peak RSS sampled every 20 ms during the job;
- script: a fresh Python process that does it directly: `mlflow.pyfunc.load_model`
  on the same version (same MLflow server), `pandas.read_parquet` of the same rows
  (a Parquet file written beforehand), `predict`, `DataFrame.to_parquet`; timed from
  start to exit, its peak RSS sampled the same way.

Targets (issue 11): platform wall time <= 1.5x the script's; the Trainer's peak RSS
<= 1 GB (1024 MiB). Parts (b) and (c) (online Predict): bench/score_online.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bench.train import MiB, Platform, large_csv, peak_rss
from devstack.stack import Stack, StackOptions

WALL_RATIO_LIMIT = 1.5
TRAINER_RSS_LIMIT_MIB = 1024
FINAL_STATES = {"SUCCEEDED", "FAILED", "CANCELLED"}

DIRECT_SCRIPT = """
import sys, time
started = time.perf_counter()
import mlflow
import pandas as pd
model_uri, source, destination = sys.argv[1:4]
model = mlflow.pyfunc.load_model(model_uri)
frame = pd.read_parquet(source)
predictions = model.predict(frame)
predictions.to_parquet(destination, index=False)
print(len(predictions), round(time.perf_counter() - started, 3))
"""


def score_on_platform(
    platform: Platform, dataset_id: str, model: str, version: int
) -> tuple[float, float, dict[str, Any]]:
    """Seconds from submit to SUCCEEDED, the Trainer's peak RSS (MiB), the final job."""
    trainer = platform.stack.processes["trainer"]
    with peak_rss(trainer.pid) as rss:
        started = time.perf_counter()
        response = platform.http.post(
            "/v1/scoringJobs",
            json={"datasetId": dataset_id, "modelName": model, "modelVersion": str(version)},
        )
        response.raise_for_status()
        job = response.json()
        while job["state"] not in FINAL_STATES:
            time.sleep(0.2)
            job = platform.http.get(f"/v1/scoringJobs/{job['jobId']}").json()
        elapsed = time.perf_counter() - started
    if job["state"] != "SUCCEEDED":
        raise RuntimeError(f"scoring job did not succeed: {json.dumps(job)[:2000]}")
    return elapsed, rss["peak_mib"], job


def score_with_script(
    stack: Stack, work_dir: Path, model_uri: str, parquet: Path
) -> tuple[float, float, int]:
    """Seconds from start to exit, peak RSS (MiB) and rows written by the direct script."""
    assert stack.mlflow is not None
    script = work_dir / "direct_score.py"
    script.write_text(DIRECT_SCRIPT)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": stack.mlflow.url,
        "MLFLOW_TRACKING_USERNAME": stack.mlflow.username,
        "MLFLOW_TRACKING_PASSWORD": stack.mlflow.password,
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(script), model_uri, str(parquet), str(work_dir / "direct.parquet")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    with peak_rss(process.pid) as rss:
        output, _ = process.communicate()
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"the direct script failed ({process.returncode})")
    return elapsed, rss["peak_mib"], int(output.split()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--train-rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-score-") as scratch:
        work_dir = Path(scratch)
        print(f"generating {args.rows:,} + {args.train_rows:,} rows x 28 columns ...", flush=True)
        score_csv = large_csv(work_dir, args.rows, seed=42)
        train_csv = large_csv(work_dir, args.train_rows, seed=7)
        parquet = work_dir / "to-score.parquet"
        pq.write_table(pacsv.read_csv(score_csv), parquet)
        options = StackOptions(work_dir=work_dir / "stack")
        with Stack(options) as stack:
            platform = Platform(stack)
            print("uploading and training the model ...", flush=True)
            train_id = platform.upload(train_csv, "bench-score-train")
            _, trained = platform.train(train_id, "label")
            model = trained["mlflow"]["registeredModelName"]
            version = int(trained["mlflow"]["registeredModelVersion"])
            print(f"uploading the {args.rows:,} rows to score ...", flush=True)
            score_id = platform.upload(score_csv, "bench-score-input")
            idle_mib = peak_rss_now(stack.processes["trainer"].pid)
            print("scoring on the platform ...", flush=True)
            wall, trainer_mib, job = score_on_platform(platform, score_id, model, version)
            print("scoring with the direct script ...", flush=True)
            script_wall, script_mib, script_rows = score_with_script(
                stack, work_dir, f"models:/{model}/{version}", parquet
            )
        scored = int(job["output"]["rowsScored"])
        ratio = wall / script_wall
        print()
        print(f"batch scoring, {args.rows:,} rows x 28 columns, model {model} v{version}")
        print(f"{'case':<34}{'wall s':>9}{'peak RSS MiB':>15}{'rows':>11}")
        for case, seconds, mib, rows in (
            ("platform (scoring job, Trainer)", wall, trainer_mib, scored),
            ("direct script (pyfunc)", script_wall, script_mib, script_rows),
        ):
            print(f"{case:<34}{seconds:>9.1f}{mib:>15.0f}{rows:>11,}")
        print(f"Trainer RSS before the job: {idle_mib:.0f} MiB")
        wall_ok = ratio <= WALL_RATIO_LIMIT
        rss_ok = trainer_mib <= TRAINER_RSS_LIMIT_MIB
        print(
            f"wall ratio platform/script {ratio:.2f} (target <= {WALL_RATIO_LIMIT}): "
            + ("met" if wall_ok else "MISSED")
        )
        print(
            f"Trainer peak RSS {trainer_mib:.0f} MiB (target <= {TRAINER_RSS_LIMIT_MIB}): "
            + ("met" if rss_ok else "MISSED")
        )
        return 0 if wall_ok and rss_ok else 1


def peak_rss_now(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / MiB


if __name__ == "__main__":
    sys.exit(main())
