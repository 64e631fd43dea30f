"""Training benchmark: a job through the whole platform against the original baseline script.

    .venv/bin/python -m bench.train [--jobs 5] [--large-rows 1000000] [--skip-large]

Starts a real stack (nats-server, MLflow with basic auth, the services, one
Trainer, the gateway with auth on) and, in the same run and against the same
MLflow server, measures:

(a) a 569-row dataset (scikit-learn's breast cancer): job submit to SUCCEEDED
    through the gateway (`POST /v1/trainingJobs`, then the job's Server-Sent Events
    `GET /v1/trainingJobs/{id}:watch` until final), p50 over `--jobs` jobs (after
    one warm-up job), next to the original baseline run
    directly as a script (`python baseline_train.py`: read the CSV, label-encode,
    fit `LGBMClassifier` with 100 trees, `mlflow.lightgbm.log_model` with
    `registered_model_name`), p50 over as many runs;
(b) a 1M-row x 28-column generated dataset (24 numeric columns with some
    missing values, 3 text columns, a yes/no target): one job and one script
    run, with their wall times, validation ROC AUC and peak RSS (the Trainer
    process's during the job; the script's own).

The script holds out the same 20% validation rows as the Trainer (sklearn's
stratified `train_test_split`, seed 42) so that both report a metric on the
same rows; it trains on the other 80%. Time spent in MLflow is itemized on
both sides: the Trainer's per-step seconds from its log ("attempt finished"),
the script's from its own timers.

Targets: (a) platform p50 <= 0.3x the script's; (b) platform wall <= 1.0x the
script's with an equal or better validation metric, and the Trainer's peak RSS
<= 1.5x the script's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.csv as pacsv

from devstack.stack import Stack, StackOptions

MiB = 1024 * 1024
FINAL_STATES = {"SUCCEEDED", "FAILED", "CANCELLED"}

# The original baseline, run as its own process exactly as a user would run it.
BASELINE_SCRIPT = r"""
import json, sys, time
started = time.perf_counter()
timings = {}
import mlflow, mlflow.lightgbm
import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
timings["import"] = time.perf_counter() - started

csv_path, target, model_name = sys.argv[1:4]
mark = time.perf_counter()
frame = pd.read_csv(csv_path)
frame = frame[frame[target].notna()].reset_index(drop=True)
labels = LabelEncoder().fit_transform(frame.pop(target).astype(str))
for column in frame.columns:
    if not pd.api.types.is_numeric_dtype(frame[column]):
        frame[column] = LabelEncoder().fit_transform(frame[column].astype(str))
timings["read_and_encode"] = time.perf_counter() - mark

mark = time.perf_counter()
train, valid = train_test_split(
    np.arange(len(frame)), test_size=0.2, random_state=42, stratify=labels
)
model = LGBMClassifier(n_estimators=100, learning_rate=0.1, objective="binary", verbose=-1)
model.fit(frame.iloc[train], labels[train])
roc_auc = float(roc_auc_score(labels[valid], model.predict_proba(frame.iloc[valid])[:, 1]))
timings["fit"] = time.perf_counter() - mark

mark = time.perf_counter()
mlflow.set_experiment("baseline-script")
timings["mlflow_set_experiment"] = time.perf_counter() - mark
mark = time.perf_counter()
with mlflow.start_run():
    timings["mlflow_start_run"] = time.perf_counter() - mark
    mark = time.perf_counter()
    mlflow.lightgbm.log_model(model, name="model", registered_model_name=model_name)
    timings["mlflow_log_model_and_register"] = time.perf_counter() - mark
    mark = time.perf_counter()
timings["mlflow_end_run"] = time.perf_counter() - mark
timings["total"] = time.perf_counter() - started
# The kernel's exact peak RSS of this process (a short spike escapes 20 ms samples).
peak_kib = [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(json.dumps({"timings": timings, "roc_auc": roc_auc, "vmhwm_kib": int(peak_kib[0])}))
"""


# -- data -------------------------------------------------------------------------------------


def small_csv(directory: Path) -> Path:
    from sklearn.datasets import load_breast_cancer

    path = directory / "breast-cancer.csv"
    load_breast_cancer(as_frame=True).frame.to_csv(path, index=False)
    return path


def large_csv(directory: Path, rows: int, seed: int = 42) -> Path:
    """24 numeric columns (some missing), 3 text columns and a yes/no target: 28 columns."""
    path = directory / f"large-{rows}.csv"
    rng = np.random.default_rng(seed)
    segments = np.array(["retail", "wholesale", "online", "partner", "public"])
    segment_effect = rng.normal(0, 0.6, len(segments))
    regions = np.array([f"region-{k:02d}" for k in range(50)])
    region_effect = rng.normal(0, 0.7, len(regions))
    products = np.array([f"product-{k:04d}" for k in range(1000)])
    slice_rows = 200_000
    writer = None
    for start in range(0, rows, slice_rows):
        count = min(slice_rows, rows - start)
        columns: dict[str, Any] = {}
        for index in range(21):
            values = rng.normal(size=count).round(5)
            if index % 4 == 0:
                values[rng.random(count) < 0.02] = np.nan
            columns[f"f{index}"] = values
        for index in range(3):
            columns[f"i{index}"] = rng.integers(0, 100 * (index + 1), count)
        segment = rng.integers(0, len(segments), count)
        region = rng.integers(0, len(regions), count)
        columns["segment"] = segments[segment]
        columns["region"] = regions[region]
        columns["product"] = products[rng.integers(0, len(products), count)]

        def value(name: str, columns: dict[str, Any] = columns) -> Any:
            return np.nan_to_num(columns[name])

        logit = (
            1.2 * value("f0")
            - value("f1")
            + np.sin(2 * value("f2"))
            + value("f3") * value("f4")
            + 0.6 * (value("f5") > 0.3)
            + segment_effect[segment]
            + region_effect[region]
            + 0.01 * columns["i0"]
            - 0.5
            + rng.normal(0, 1.0, count)
        )
        columns["label"] = np.where(logit > 0, "yes", "no")
        table = pa.table(columns)
        if writer is None:
            writer = pacsv.CSVWriter(str(path), table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()
    return path


# -- measuring --------------------------------------------------------------------------------


@contextmanager
def peak_rss(pid: int) -> Iterator[dict[str, float]]:
    """The highest RSS (MiB) of a process while the block runs, sampled every 20 ms."""
    result = {"peak_mib": 0.0}
    process = psutil.Process(pid)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                result["peak_mib"] = max(result["peak_mib"], process.memory_info().rss / MiB)
            except psutil.Error:
                return
            stop.wait(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()


def reset_peak_rss(pid: int) -> None:
    """Make the kernel's peak RSS of a live process (VmHWM) count from now (Linux >= 4.0;
    needs the right to write the process's clear_refs, which its owner or root has)."""
    with contextlib.suppress(OSError):  # then the sampled figure stands alone
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def kernel_peak_rss_mib(pid: int) -> float:
    """The kernel's own peak RSS of a live process (VmHWM), exact where 20 ms samples can
    miss a short spike; 0 when it cannot be read."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Outcome:
    wall_seconds: float
    roc_auc: float | None = None
    peak_rss_mib: float | None = None
    mlflow_seconds: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)


class Platform:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.http = httpx.Client(
            base_url=stack.gateway_url,
            headers={"Authorization": f"Bearer {stack.api_token}"},
            timeout=httpx.Timeout(600.0),
        )

    def upload(self, path: Path, name: str) -> str:
        def body() -> Iterator[bytes]:
            with path.open("rb") as handle:
                while chunk := handle.read(4 * MiB):
                    yield chunk

        response = self.http.post(
            "/v1/datasets",
            params={"displayName": name},
            content=body(),
            headers={"Content-Type": "text/csv"},
        )
        response.raise_for_status()
        dataset = response.json()
        while dataset.get("state") != "READY":
            if dataset.get("state") == "FAILED":
                raise RuntimeError(f"upload failed: {dataset}")
            time.sleep(0.2)
            dataset = self.http.get(f"/v1/datasets/{dataset['datasetId']}").json()
        return str(dataset["datasetId"])

    def train(self, dataset_id: str, target: str) -> tuple[float, dict[str, Any]]:
        """Submit a job and wait for its final state; seconds from submit to final."""
        started = time.perf_counter()
        response = self.http.post(
            "/v1/trainingJobs",
            json={"datasetId": dataset_id, "targetColumn": target, "task": "AUTO"},
        )
        response.raise_for_status()
        job = self.wait_final(response.json())
        elapsed = time.perf_counter() - started
        if job["state"] != "SUCCEEDED":
            raise RuntimeError(f"job did not succeed: {json.dumps(job)[:2000]}")
        return elapsed, job

    def wait_final(self, job: dict[str, Any]) -> dict[str, Any]:
        """The job once final, from its Server-Sent Events stream (no polling load on the
        machine while it trains); polling at 100 ms if the stream ends early."""
        if job.get("state") in FINAL_STATES:
            return job
        with self.http.stream("GET", f"/v1/trainingJobs/{job['jobId']}:watch") as events:
            for line in events.iter_lines():
                if not line.startswith("data:"):
                    continue
                document = json.loads(line[len("data:") :])
                current = document.get("trainingJob", document)
                if current.get("state") in FINAL_STATES:
                    return dict(current)
        while job.get("state") not in FINAL_STATES:
            time.sleep(0.1)
            job = self.http.get(f"/v1/trainingJobs/{job['jobId']}").json()
        return job

    def mlflow_seconds(self, job_id: str) -> tuple[dict[str, float], dict[str, int]]:
        """The Trainer's itemized MLflow time (and calls) for a job, from its log."""
        for _ in range(50):  # the line is written just after the final event
            for line in self.stack.logs("trainer").splitlines():
                if job_id in line and '"attempt finished"' in line:
                    entry = json.loads(line)
                    return dict(entry.get("mlflow_seconds", {})), dict(
                        entry.get("mlflow_steps", {})
                    )
            time.sleep(0.1)
        return {}, {}


def run_script(script: Path, csv: Path, target: str, model: str, stack: Stack) -> Outcome:
    assert stack.mlflow is not None
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": stack.mlflow.url,
        "MLFLOW_TRACKING_USERNAME": stack.mlflow.username,
        "MLFLOW_TRACKING_PASSWORD": stack.mlflow.password,
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(script), str(csv), target, model],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    with peak_rss(process.pid) as rss:
        output, _ = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"baseline script failed ({process.returncode})")
    report = json.loads(output.strip().splitlines()[-1])
    timings = report["timings"]
    return Outcome(
        wall_seconds=wall,
        roc_auc=report["roc_auc"],
        # Not ru_maxrss: after a vfork it counts the parent's memory at exec time.
        peak_rss_mib=max(rss["peak_mib"], report.get("vmhwm_kib", 0) / 1024),
        mlflow_seconds={k: round(v, 3) for k, v in timings.items() if k.startswith("mlflow")},
        detail={k: round(v, 3) for k, v in timings.items() if not k.startswith("mlflow")},
    )


# -- the two cases ---------------------------------------------------------------------------


def small_case(
    platform: Platform, script: Path, work_dir: Path, jobs: int
) -> tuple[list[Outcome], list[Outcome]]:
    csv = small_csv(work_dir)
    dataset_id = platform.upload(csv, "breast-cancer")
    platform.train(dataset_id, "target")  # warm-up: first registered model, first experiment
    ours = []
    for _ in range(jobs):
        wall, job = platform.train(dataset_id, "target")
        seconds, steps = platform.mlflow_seconds(job["jobId"])
        ours.append(
            Outcome(
                wall,
                roc_auc=job["metrics"].get("roc_auc"),
                mlflow_seconds=seconds,
                detail={"mlflow_calls": sum(steps.values())},
            )
        )
    theirs = [
        run_script(script, csv, "target", "baseline-breast-cancer", platform.stack)
        for _ in range(jobs)
    ]
    return ours, theirs


def large_case(
    platform: Platform, script: Path, work_dir: Path, rows: int
) -> tuple[Outcome, Outcome]:
    csv = large_csv(work_dir, rows)
    dataset_id = platform.upload(csv, f"large-{rows}")
    trainer_pid = platform.stack.processes["trainer"].pid
    with peak_rss(trainer_pid) as rss:
        wall, job = platform.train(dataset_id, "label")
    seconds, steps = platform.mlflow_seconds(job["jobId"])
    summary = job.get("summary", {})
    ours = Outcome(
        wall,
        roc_auc=job["metrics"].get("roc_auc"),
        peak_rss_mib=rss["peak_mib"],
        mlflow_seconds=seconds,
        detail={
            "mlflow_calls": sum(steps.values()),
            "best_iteration": summary.get("bestIteration"),
            "learning_rate": summary.get("effectiveParams", {}).get("learning_rate"),
        },
    )
    theirs = run_script(script, csv, "label", f"baseline-large-{rows}", platform.stack)
    return ours, theirs


# -- report -----------------------------------------------------------------------------------


def p50(outcomes: list[Outcome]) -> float:
    return statistics.median(outcome.wall_seconds for outcome in outcomes)


def mlflow_total(outcome: Outcome) -> float:
    seconds = outcome.mlflow_seconds
    # The Trainer's steps overlap (parallel calls): report their sum and say so.
    return round(sum(seconds.values()), 2)


def report(
    small: tuple[list[Outcome], list[Outcome]] | None,
    large: tuple[Outcome, Outcome] | None,
) -> bool:
    ok = True
    print()
    print(f"{'case':44} {'platform':>10} {'script':>10} {'ratio':>7} {'target':>7}  verdict")
    print("-" * 92)
    if small is not None:
        ours, theirs = small
        ratio = p50(ours) / p50(theirs)
        passed = ratio <= 0.3
        ok &= passed
        print(
            f"{'(a) 569 rows, submit→SUCCEEDED p50 (s)':44} {p50(ours):>10.2f} "
            f"{p50(theirs):>10.2f} {ratio:>7.2f} {'≤ 0.30':>7}  {'PASS' if passed else 'FAIL'}"
        )
    if large is not None:
        ours_large, theirs_large = large
        ratio = ours_large.wall_seconds / theirs_large.wall_seconds
        metric_ok = (ours_large.roc_auc or 0) >= (theirs_large.roc_auc or 1)
        rss_ratio = (ours_large.peak_rss_mib or 0) / (theirs_large.peak_rss_mib or 1)
        passed = ratio <= 1.0 and metric_ok and rss_ratio <= 1.5
        ok &= passed
        print(
            f"{'(b) 1M x 28, submit→SUCCEEDED (s)':44} {ours_large.wall_seconds:>10.2f} "
            f"{theirs_large.wall_seconds:>10.2f} {ratio:>7.2f} {'≤ 1.00':>7}  "
            f"{'PASS' if ratio <= 1.0 else 'FAIL'}"
        )
        print(
            f"{'    validation ROC AUC':44} {ours_large.roc_auc or 0:>10.4f} "
            f"{theirs_large.roc_auc or 0:>10.4f} {'':>7} {'≥':>7}  "
            f"{'PASS' if metric_ok else 'FAIL'}"
        )
        print(
            f"{'    peak RSS (MiB; Trainer vs script)':44} {ours_large.peak_rss_mib or 0:>10.0f} "
            f"{theirs_large.peak_rss_mib or 0:>10.0f} {rss_ratio:>7.2f} {'≤ 1.50':>7}  "
            f"{'PASS' if rss_ratio <= 1.5 else 'FAIL'}"
        )
    print()
    print("MLflow time, itemized (seconds; the Trainer's calls overlap, so steps sum to more than")
    print("the wall time they took):")
    if small is not None:
        print(f"  (a) platform, per job: {[mlflow_total(o) for o in small[0]]}")
        print(f"      last job: {small[0][-1].mlflow_seconds}; {small[0][-1].detail}")
        print(f"  (a) script, per run:   {[mlflow_total(o) for o in small[1]]}")
        print(f"      last run: {small[1][-1].mlflow_seconds}; other steps {small[1][-1].detail}")
        print(f"  (a) platform walls {[round(o.wall_seconds, 2) for o in small[0]]}")
        print(f"      script walls   {[round(o.wall_seconds, 2) for o in small[1]]}")
    if large is not None:
        print(f"  (b) platform: {large[0].mlflow_seconds}; {large[0].detail}")
        print(f"  (b) script:   {large[1].mlflow_seconds}; other steps {large[1].detail}")
    print()
    print("verdict:", "PASS" if ok else "FAIL")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--large-rows", type=int, default=1_000_000)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-small", action="store_true")
    parser.add_argument("--work-dir", type=Path, default=None)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        work_dir = arguments.work_dir or Path(scratch)
        work_dir.mkdir(parents=True, exist_ok=True)
        script = work_dir / "baseline_train.py"
        script.write_text(BASELINE_SCRIPT)
        with Stack(StackOptions(work_dir=work_dir / "stack")) as stack:
            platform = Platform(stack)
            small = (
                None
                if arguments.skip_small
                else small_case(platform, script, work_dir, arguments.jobs)
            )
            large = (
                None
                if arguments.skip_large
                else large_case(platform, script, work_dir, arguments.large_rows)
            )
            ok = report(small, large)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
